"""`imgq classify` owns its job (issue 25.1, 25.5): it ends the job on every way out (a signal, its worker failing to
start), hands it only to a worker with the weights it asked for, and says in its first line which Redis and which
namespace it uses. Real processes: `imgq` runs as a subprocess, workers are real worker processes, signals are
real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from imgq.contract import MODEL_NAME, BatchRef, Heartbeat, model_queue
from imgq.jobs.queue import publish
from imgq.results.store import ResultStore, delete_namespace
from producer.local.workers import DEFAULT_URL, redis_answers
from tests import imagegen
from tests.conftest import make_settings
from tests.processes import imgq_cli, start_worker, wait_for_workers, wait_until_done
from tests.test_local_use import Running, classify_env, imgq_argv

GHOST_WEIGHTS = "random:0 (untrained: labels are meaningless)"  # IMGQ_WEIGHTS=random, which classify_env sets


def ghost(store: ResultStore) -> None:
    """The heartbeat of a live worker with classify's weights and precision (fp32) and nobody behind it: classify
    uses it instead of starting a worker, and its job waits for good. Only a way out ends the run."""
    store.send_heartbeat("ghost@nowhere:1", Heartbeat(hostname="ghost@nowhere", pid=2**22 + 1, host="nowhere",
                                                      weights=GHOST_WEIGHTS, job_precision="fp32",
                                                      sent_at=time.time()), ttl=600)


def one_photo(tmp_path):
    imagegen.save(tmp_path / "photos" / "a.png", size=(48, 48), seed=1)
    return str(tmp_path / "photos")


@pytest.fixture
def own_settings(redis_url, tmp_path):
    settings = make_settings(redis_url, tmp_path, batch_size=4)
    yield settings
    delete_namespace(redis_url, settings.namespace)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "timeout"])
def test_classify_ended_by_a_signal_cancels_its_job(own_settings, tmp_path, how):
    store = ResultStore.from_settings(own_settings)
    ghost(store)
    argv = imgq_argv("classify", one_photo(tmp_path))
    if how == "timeout":  # coreutils' timeout sends SIGTERM when the time is up; the run is waiting by then
        argv = ["timeout", "30", *argv]
    running = Running(argv, classify_env(own_settings), tmp_path)
    job = running.wait_for_line(r"Job (\w+): 1 image in 1 batch")[1]
    if how != "timeout":
        os.kill(running.popen.pid, getattr(signal, how))
    code = running.finish(120)
    assert code == (124 if how == "timeout" else 128 + getattr(signal, how)), running.text
    said = "SIGTERM" if how == "timeout" else how
    assert f"{said}: cancelled job {job} (0 of 1 images have records" in running.text
    assert "Traceback" not in running.text
    assert store.status(job).state == "cancelled" and store.active_jobs() == set()


@pytest.mark.parametrize("where", ["a password", "the default address"])
def test_classify_names_its_broker_and_namespace_in_its_first_line(server, tmp_path, where):
    if where == "a password":
        url = server("--requirepass", "s3cret", password="s3cret")
        shown, configured = url.replace("s3cret", "***"), {"IMGQ_BROKER_URL": url}
    elif redis_answers(DEFAULT_URL):  # no IMGQ_BROKER_URL: classify takes whatever answers there
        url, shown, configured = DEFAULT_URL, f"{DEFAULT_URL} (none configured: the Redis answering there)", {}
    else:
        pytest.skip(f"nothing answers at {DEFAULT_URL}")
    settings = make_settings(url, tmp_path)
    try:
        ghost(ResultStore.from_settings(settings))
        env = classify_env(settings)
        env.pop("IMGQ_BROKER_URL")
        running = Running(imgq_argv("classify", one_photo(tmp_path)), {**env, **configured}, tmp_path)
        running.wait_for_line(r"Job (\w+): 1 image in 1 batch")
        os.kill(running.popen.pid, signal.SIGTERM)
        running.finish(120)
        assert running.lines[0] == f"Broker: {shown}, namespace {settings.namespace}.", running.text
        assert "s3cret" not in running.text
    finally:
        delete_namespace(url, settings.namespace)


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["a damaged file", "imagenet offline"])
def test_classify_whose_worker_cannot_start_cancels_its_job(own_settings, tmp_path, weights):
    env = classify_env(own_settings, KERAS_HOME=str(tmp_path / "keras"), IMGQ_RUNTIME="openvino")
    if weights == "a damaged file":
        (tmp_path / "bad.weights.h5").write_bytes(b"not HDF5 at all")
        env["IMGQ_WEIGHTS"], said = str(tmp_path / "bad.weights.h5"), "Could not load weights from "
    else:
        env["IMGQ_WEIGHTS"], said = "imagenet", "Could not download the ImageNet weights of resnet50"
    running = Running(imgq_argv("classify", one_photo(tmp_path)), env, tmp_path)
    job = running.wait_for_line(r"Job (\w+): 1 image in 1 batch")[1]
    code = running.finish()
    if code == 0 and weights == "imagenet offline":
        pytest.skip("this machine can download the ImageNet weights")
    assert code == 1, running.text
    # The worker's exit (its code) or its last log line (it says it stops): whichever classify sees first.
    assert re.match(rf"Error: The worker (exited with code 2|cannot serve): {re.escape(said)}", running.lines[-1]), \
        running.text
    assert f"cancelled job {job} (0 of 1 images have records" in running.text and "Traceback" not in running.text
    store = ResultStore.from_settings(own_settings)
    assert store.status(job).state == "cancelled" and store.active_jobs() == set()


# -- a job goes only to a worker with the weights it asked for ---------------------------------------------------

@pytest.fixture(scope="module")
def other_weights(redis_url, tmp_path_factory):
    """A real worker with weights random:1, in a namespace of its own: ``(settings, worker process)``."""
    folder = tmp_path_factory.mktemp("other-weights")
    settings = make_settings(redis_url, folder, weights="random:1", batch_size=4)
    worker = start_worker(settings, "other", folder / "other.log")
    try:
        wait_for_workers(ResultStore.from_settings(settings), [worker])
        yield settings, worker
    finally:
        worker.stop()
        delete_namespace(redis_url, settings.namespace)


def weights_queue_depth(store: ResultStore, weights: str) -> int:
    return store.redis.llen(store.keys.model_queue(model_queue(store.keys.ns, MODEL_NAME, weights)))


@pytest.mark.slow
def test_a_job_asking_for_other_weights_is_left_for_a_worker_with_them(other_weights, tmp_path):
    settings, worker = other_weights
    store = ResultStore.from_settings(settings)
    photos = [imagegen.save(tmp_path / "photos" / f"{i}.png", size=(48, 48), seed=i) for i in range(3)]
    asked = imgq_cli(settings, "submit", str(tmp_path / "photos"), "--weights", "random:7").stdout.strip()
    # A batch of it in the model's queue (sent by hand, or by a producer that routed by model alone): the worker
    # of random:1 takes it, classifies nothing and sends it on to the queue of random:7, where it waits.
    publish([BatchRef(asked, 0, MODEL_NAME)], settings)
    control = imgq_cli(settings, "submit", str(tmp_path / "photos")).stdout.strip()  # any weights: taken
    wait_until_done(store, control, 180, [worker])
    assert {r.weights for r in store.iter_records(control)} == {"random:1 (untrained: labels are meaningless)"}
    deadline = time.monotonic() + 60
    while weights_queue_depth(store, "random:7") < 2:  # the one submit queued, and the one sent on
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(0.2)
    assert (f"Batch 0 of job {asked} asks for weights random:7, not random:1 (untrained: labels are meaningless): "
            "sent to the queue of those weights") in worker.output()
    assert store.status(asked).processed == 0 and list(store.iter_records(asked)) == []
    assert store.status(asked).state == "queued" and len(photos) == store.status(asked).total
    status = imgq_cli(settings, "status", asked, "--json")
    assert json.loads(status.stdout)["waiting"].startswith(
        "waits for a worker of model resnet50 with weights random:7; live workers of resnet50 have random:1")


@pytest.mark.slow
def test_classify_with_a_live_worker_of_other_weights_starts_its_own(other_weights, tmp_path):
    settings, worker = other_weights
    store = ResultStore.from_settings(settings)
    for i in range(3):
        imagegen.save(tmp_path / "photos" / f"{i}.png", size=(48, 48), seed=i)
    waiting = imgq_cli(settings, "submit", str(tmp_path / "photos"), "--weights", "random:7").stdout.strip()
    env = classify_env(settings)
    running = Running(imgq_argv("classify", str(tmp_path / "photos"), "--weights", "random:7", "-o",
                                str(tmp_path / "out.jsonl")), env, tmp_path)
    assert running.finish() == 0, running.text
    assert running.lines[0] == f"Broker: {settings.broker_url}, namespace {settings.namespace}."
    assert ("The live worker of model resnet50 has weights random:1 (untrained: labels are meaningless), not "
            "random:7: starting one with random:7.") in running.text
    assert "Started a worker (pid" in running.text
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(records) == 3 and {r["weights"] for r in records} == {"random:7 (untrained: labels are meaningless)"}
    assert not any(r["worker"].startswith("other@") for r in records)
    # The job that waited for random:7 was taken by the worker classify started, the first with those weights.
    wait_until_done(store, waiting, 60)
    assert {(r.weights, r.worker.split("@")[0].startswith("imgq-local-")) for r in store.iter_records(waiting)} == {
        ("random:7 (untrained: labels are meaningless)", True)}
