"""A worker alive but broken is not alive (issue 25.3, 25.4): one that cannot load its model, for any reason,
or whose heartbeat thread dies, exits with one line and no traceback; one that starts says what it is doing
(a `starting` heartbeat, a `warming up` line before its ready line), and warms up with a small pass, not a
full batch of its batch size. Real worker processes, a real Redis; faults come from tests/hooks."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import time

import pytest

from imgq.contract import FAILED, STARTING
from imgq.results.store import ResultStore
from producer.local.workers import LocalWorker
from tests.reliability.conftest import hook_env

pytestmark = pytest.mark.slow

EXIT_TIMEOUT = 120  # a worker that cannot serve exits before it imports TensorFlow, or soon after


def said(worker: LocalWorker) -> list[str]:
    """The worker's own lines (``imgq worker: ...``) in its log."""
    return [line for line in worker.log_path.read_text().splitlines() if line.startswith("imgq worker: ")]


def exit_code(worker: LocalWorker, timeout: float = EXIT_TIMEOUT) -> int:
    try:
        return worker.started.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {timeout} s:\n{worker.log_path.read_text()[-3000:]}") from None


@pytest.fixture
def workers():
    """``start(settings, **env)``: a worker process, not waited for; each is killed after the test."""
    started: list[LocalWorker] = []

    def start(settings, **env: str) -> LocalWorker:
        worker = LocalWorker(settings, env=env)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout=10)


def test_a_seed_keras_refuses_stops_the_worker_with_one_line(fast_settings, workers):
    """IMGQ_WEIGHTS=random:-1: Keras' set_random_seed raised a ValueError, which Celery logged and swallowed:
    the worker ran on without a model, looking alive, and `imgq classify` waited behind a 0% bar."""
    worker = workers(dataclasses.replace(fast_settings, weights="random:-1"))
    assert exit_code(worker) == 2
    # Refused as it reads its settings (issue 25.2: one reading of the weights for the producer and the worker),
    # before Celery or TensorFlow start: one line, ending as a stopping worker's do.
    assert said(worker) == ["imgq worker: IMGQ_WEIGHTS: Expected random or random:SEED with an integer seed from 0 "
                            "to 4294967295. Received: 'random:-1'; exiting"]
    assert "Traceback" not in worker.log_path.read_text()


def test_a_prefork_worker_whose_child_cannot_load_exits_non_zero(fast_settings, workers):
    """IMGQ_POOL=prefork: each child loads the model. One that cannot says why and exits; Celery, unable to
    start its pool, stops too (with its own report of that), and `python -m worker` now passes its exit code
    on: it exited 0, and a supervisor restarting failed processes only left the worker down."""
    worker = workers(dataclasses.replace(fast_settings, pool="prefork", concurrency=1),
                     **hook_env(TEST_HOOK_FAIL_LOAD="1"))
    assert exit_code(worker) != 0
    assert any(line.startswith("imgq worker: cannot load model") and line.endswith("; exiting")
               for line in said(worker)), said(worker)


def test_any_exception_while_loading_stops_the_worker_with_one_line_and_a_failed_beat(fast_settings, workers):
    """Not only a WeightsError: anything the load raises (here a RuntimeError, as memory running out or a
    runtime's bug would) stops the worker, and its heartbeat says why for three beats."""
    settings = dataclasses.replace(fast_settings, heartbeat_seconds=20)  # the failed beat outlives the exit
    worker = workers(settings, **hook_env(TEST_HOOK_FAIL_LOAD="1"))
    assert exit_code(worker) == 2
    reason = ("cannot load model resnet50 with weights random on runtime openvino (RuntimeError: failing by "
              "tests/hooks)")
    assert said(worker) == [f"imgq worker: {reason}; exiting"]
    assert "Traceback" not in worker.log_path.read_text()
    store = ResultStore.from_settings(settings)
    assert store.workers() == []  # not live: failed
    [beat] = store.heartbeats()
    assert (beat.state, beat.detail, beat.pid, beat.model) == (FAILED, reason, worker.started.pid, "resnet50")


def test_a_worker_whose_heartbeat_thread_dies_exits_with_one_line(fast_settings, workers):
    """A heartbeat thread that died (a huge IMGQ_HEARTBEAT_SECONDS overflowed its wait; here its first beat once
    Celery is ready raises) left a worker taking batches while nobody could see it hold them. It exits now, its
    key gone."""
    worker = workers(fast_settings, **hook_env(TEST_HOOK_KILL_HEARTBEAT="1"))
    assert exit_code(worker, timeout=300) == 3  # it loads the model first: beats start once it is ready
    lines = said(worker)
    assert " ready in " in lines[-2], lines
    assert lines[-1] == "imgq worker: the heartbeat thread died (RuntimeError: killed by tests/hooks); exiting"
    assert "Traceback" not in worker.log_path.read_text()
    assert ResultStore.from_settings(fast_settings).heartbeats() == []


def test_a_worker_says_it_warms_up_with_a_small_pass_before_it_is_ready(fast_settings, workers):
    """--batch-size 1024 warmed up with a pass of 1024 images, then one of 1, at every start, without a word:
    a minute or more on two cores. Now one pass of 32 images, announced, and a `starting` heartbeat meanwhile."""
    settings = dataclasses.replace(fast_settings, batch_size=1024)
    store = ResultStore.from_settings(settings)
    worker = workers(settings)
    seen = []  # (state, detail) of its heartbeats while it starts (a fresh state folder: it converts first)
    deadline = time.monotonic() + 300
    while not store.workers():
        assert time.monotonic() < deadline and worker.started.poll() is None, worker.log_path.read_text()[-3000:]
        seen += [(b.state, b.detail) for b in store.heartbeats() if (b.state, b.detail) not in seen]
        time.sleep(0.05)
    lines = said(worker)
    warming = [i for i, line in enumerate(lines)
               if re.fullmatch(r"imgq worker: warming up resnet50 on openvino \S+ \(32 images\)", line)]
    ready = [i for i, line in enumerate(lines) if " ready in " in line]
    assert len(warming) == 1 and len(ready) == 1 and warming[0] < ready[0], lines
    assert (STARTING, "loading resnet50") in seen, seen
