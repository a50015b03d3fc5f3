"""Faults with real processes: killed workers, a poison image, SIGTERM, a broker restart, cancel."""

from __future__ import annotations

import dataclasses
import signal

import pytest

from imgq.jobs.deliveries import Deliveries
from imgq.results.store import ResultStore
from producer.local.progress import wait
from producer.local.workers import EmbeddedRedis
from tests.reliability.conftest import (
    assert_exactly_one_record_each,
    crash_hook_env,
    drained,
    small_images,
    submit,
    wait_until,
)

pytestmark = pytest.mark.slow


def processed(settings, job) -> int:
    return ResultStore.from_settings(settings).status(job).processed


def test_a_worker_killed_mid_job_loses_nothing(fast_settings, start_worker, tmp_path):
    paths = small_images(tmp_path / "in", 120)
    first = start_worker()
    job = submit(fast_settings, paths)
    wait_until(lambda: processed(fast_settings, job) >= 8, 120, "the first batches")
    first.process.kill()  # SIGKILL: batches in hand stay unacknowledged for the hour of visibility timeout
    first.process.wait()
    assert processed(fast_settings, job) < len(paths)
    second = start_worker()
    wait_until(lambda: processed(fast_settings, job) == len(paths), 180, "the job to complete")
    records = assert_exactly_one_record_each(fast_settings, job, paths)
    assert {r["status"] for r in records} == {"ok"}
    assert {r["worker"].split("@")[0] for r in records} == {first.name, second.name}
    store = ResultStore.from_settings(fast_settings)
    assert max(Deliveries(store.redis, store.keys).attempts(job).values()) >= 2  # the lost ones, again


@pytest.mark.parametrize("while_, known", [("decoding", ""), ("hashing", "skip")], ids=["decoding", "hashing"])
def test_an_image_that_kills_every_worker_ends_as_worker_crashed(fast_settings, start_worker, tmp_path, while_,
                                                                 known):
    paths = small_images(tmp_path / "in", 10)
    paths[5] = paths[5].rename(paths[5].with_name("poison-5.png"))
    job = submit(fast_settings, paths, known=known)
    store = ResultStore.from_settings(fast_settings)
    restarts = 0
    while store.status(job).processed < len(paths):  # a supervisor: restart the worker each time it dies
        assert restarts <= 5, "no endless loop: the poison image must be isolated after a few deliveries"
        worker = start_worker(**crash_hook_env("poison-", while_))
        wait_until(lambda w=worker: w.process.poll() is not None or store.status(job).processed == len(paths),
                   180, "the worker to die or the job to complete")
        restarts += worker.process.poll() is not None
    records = assert_exactly_one_record_each(fast_settings, job, paths)
    assert records[5]["status"] == "error" and records[5]["error"]["code"] == "worker_crashed"
    assert [r["status"] for r in records[:5] + records[6:]] == ["ok"] * 9
    # Exactly two deaths: the batch decoded normally, then the image decoded alone. A late heartbeat that
    # gets a live worker's batch delivered again adds none: that delivery is not lost, and isolates nothing.
    assert restarts == 2


def test_sigterm_finishes_the_batches_in_hand(fast_settings, start_worker, tmp_path):
    paths = small_images(tmp_path / "in", 120)
    first = start_worker()
    job = submit(fast_settings, paths)
    wait_until(lambda: processed(fast_settings, job) >= 8, 120, "the first batches")
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=60) == 0
    store = ResultStore.from_settings(fast_settings)
    deliveries = Deliveries(store.redis, store.keys)
    assert deliveries.inflight(job) == {}  # every batch taken was finished and handed back
    done_at_stop = processed(fast_settings, job)
    assert done_at_stop % 4 == 0  # whole batches only
    start_worker()
    wait_until(lambda: processed(fast_settings, job) == len(paths), 180, "the job to complete")
    assert_exactly_one_record_each(fast_settings, job, paths)
    assert set(deliveries.attempts(job).values()) == {1}  # no batch delivered twice


def test_the_broker_restarts_mid_job(fast_settings, start_worker, tmp_path):
    paths = small_images(tmp_path / "in", 120)
    server = EmbeddedRedis(str(tmp_path / "broker"))  # append-only persistence, as the README sets it up
    url = server.start()
    port = server.port
    settings = dataclasses.replace(fast_settings, broker_url=url)
    try:
        start_worker(settings)
        job = submit(settings, paths)
        wait_until(lambda: processed(settings, job) >= 8, 120, "the first batches")
        server.stop()
        # The same address, as a restarted Redis would have.
        server = EmbeddedRedis(str(tmp_path / "broker"), port=port)
        assert server.start() == url
        final = wait(ResultStore.from_settings(settings), job, show=False, timeout=180)
        assert final.state == "done"
        assert_exactly_one_record_each(settings, job, paths)
    finally:
        server.stop()


def test_cancel_while_batches_run(fast_settings, start_worker, tmp_path):
    paths = small_images(tmp_path / "in", 120)
    start_worker()
    job = submit(fast_settings, paths)
    wait_until(lambda: processed(fast_settings, job) >= 4, 120, "the first batch")
    store = ResultStore.from_settings(fast_settings)
    store.cancel(job)
    at_cancel = processed(fast_settings, job)
    wait_until(lambda: drained(store), 60, "batches in hand to finish")
    final = store.status(job)
    assert final.state == "cancelled" and final.processed <= at_cancel + 2 * 4  # at most the 2 batches in hand
    assert len(list(store.iter_results(job))) == final.processed < len(paths)
    assert store.active_jobs() == set()  # nothing left for the reconciler to revive


def test_a_sink_job_survives_a_killed_worker_with_one_row_per_image(fast_settings, start_worker, tmp_path):
    """With --sink, records go to one Parquet file per batch; a worker SIGKILLed mid-job loses nothing and
    doubles nothing: the files hold exactly one row per image, and Redis none of the records."""
    import pyarrow.dataset as ds

    from imgq.jobs import submit as submission
    from imgq.results.sink import job_folder

    settings = dataclasses.replace(fast_settings, sink_dir=str(tmp_path / "sink"))
    store = ResultStore.from_settings(settings)
    paths = small_images(tmp_path / "in", 80)
    first = start_worker(settings)
    job = submission.submit([str(p) for p in paths], settings=settings, store=store, sink=True).job
    wait_until(lambda: store.status(job).processed >= 8, 120, "the first batches")
    first.process.kill()
    first.process.wait()
    assert store.status(job).processed < len(paths)
    start_worker(settings)
    wait_until(lambda: store.status(job).processed == len(paths), 180, "the job to complete")
    table = ds.dataset(job_folder(settings.effective_sink_dir, job), format="parquet").to_table()
    assert sorted(table.column("image").to_pylist()) == list(range(len(paths)))  # one row each, no more
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert [r.image for r in store.iter_records(job)] == list(range(len(paths)))
    assert store.redis.hlen(store.keys.results(job)) == 0
