"""Deleting a job while its batches are queued and in a worker's hands, with a real worker: nothing of the
job is left in Redis afterwards, nothing crashes, and a schedule whose job was deleted goes on."""

from __future__ import annotations

import pytest

from imgq.results.store import JobNotFound, ResultStore
from imgq.schedules.schedule import Schedule, ScheduleBook
from imgq.schedules.tick import tick
from tests.processes import imgq_cli
from tests.reliability.conftest import drained, small_images, submit, wait_until

pytestmark = pytest.mark.slow


def job_keys(store: ResultStore, job: str) -> list[str]:
    """Every key of the namespace that names the job (kombu's queue names batches, not keys)."""
    return [key for key in store.redis.scan_iter(match=f"{store.keys.ns}:*") if job in key]


def test_deleting_a_running_job_leaves_no_key_behind(fast_settings, start_worker, tmp_path):
    store = ResultStore.from_settings(fast_settings)
    paths = small_images(tmp_path / "in", 60)
    worker = start_worker()
    job = submit(fast_settings, paths)
    wait_until(lambda: store.status(job).processed >= 4, 120, "the first records")
    assert imgq_cli(fast_settings, "delete", job).exit_code == 0
    # The batches still queued, and those in the worker's hands, run into a job that is gone.
    wait_until(lambda: drained(store), 120, "the queue to drain")
    assert job_keys(store, job) == []
    with pytest.raises(JobNotFound):
        store.status(job)
    status = imgq_cli(fast_settings, "status", job, check=False)
    assert status.exit_code == 1 and status.output.strip() == f"Error: No job {job!r} in the results store."
    assert worker.process.poll() is None  # and the worker goes on


def test_deleting_a_running_sink_job_leaves_no_file_behind(fast_settings, start_worker, tmp_path):
    """The batches in a worker's hands when a sink job is deleted wrote their files after the delete had
    removed the job's: `<sink>/<job>/batch-*.parquet` stayed for ever."""
    import dataclasses
    import os

    from imgq.results.sink import job_folder

    settings = dataclasses.replace(fast_settings, sink_dir=str(tmp_path / "sink"))
    store = ResultStore.from_settings(settings)
    paths = small_images(tmp_path / "in", 60)
    start_worker(settings)
    job = submit(settings, paths, sink=True)
    wait_until(lambda: store.status(job).processed >= 4, 120, "the first batches")
    assert imgq_cli(settings, "delete", job).exit_code == 0
    wait_until(lambda: drained(store), 120, "the queue to drain")
    assert not os.path.exists(job_folder(settings.effective_sink_dir, job))
    assert job_keys(store, job) == []


def test_a_schedule_whose_job_was_deleted_goes_on(fast_settings, start_worker, tmp_path):
    store = ResultStore.from_settings(fast_settings)
    folder = tmp_path / "in"
    small_images(folder, 12)
    book = ScheduleBook(store, fast_settings)
    book.add(Schedule(name="photos", paths=(str(folder),), every=3600, batch_size=4))
    start_worker()
    first = tick("photos", settings=fast_settings, store=store, trigger="manual")
    wait_until(lambda: store.status(first["job"]).processed >= 4, 120, "the first records")
    imgq_cli(fast_settings, "delete", first["job"])
    wait_until(lambda: drained(store), 120, "the queue to drain")
    second = tick("photos", settings=fast_settings, store=store, trigger="manual")
    assert second["outcome"] == "submitted" and second["found"]["new"] == 12  # the deleted job taught nothing
    wait_until(lambda: store.status(second["job"]).finished, 120, "the second job")
    assert job_keys(store, first["job"]) == []
