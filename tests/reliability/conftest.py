"""Real workers with short timings, started and killed at will, for the fault tests.

Timings are shortened here, never in the defaults: heartbeats every second, reconciling every 2 s, one
normal delivery before a batch is decoded image by image. The visibility timeout stays at an hour, so a
test that passes shows imgq's own reconciling at work, not Redis' redelivery.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imgq.jobs import submit as enqueue
from imgq.results.store import ResultStore, delete_namespace
from imgq.settings import Settings
from producer.local.workers import LocalWorker
from tests import imagegen
from tests.conftest import make_settings

FAST = {"heartbeat_seconds": 1, "reconcile_seconds": 2, "max_deliveries": 1, "batch_size": 4, "concurrency": 2,
        "visibility_timeout": 3600}


@pytest.fixture
def fast_settings(redis_url, tmp_path):
    settings = make_settings(redis_url, tmp_path, **FAST)
    yield settings
    delete_namespace(settings.effective_results_url, settings.namespace)


@pytest.fixture
def start_worker(fast_settings):
    """``start_worker(settings=None, **env)``: a ready worker process; all are killed after the test."""
    started: list[LocalWorker] = []

    def start(settings: Settings | None = None, **env: str) -> LocalWorker:
        settings = settings or fast_settings
        worker = LocalWorker(settings, env=env)
        worker.start()
        started.append(worker)
        worker.wait_ready(ResultStore.from_settings(settings), timeout=180)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def drained(store: ResultStore) -> bool:
    """No batch message waits in the model's queue or is in a worker's hands: kombu keeps a message in its
    unacked hash from its delivery until its task has finished (task_acks_late). A heartbeat's ``in_hand`` is
    up to a beat old, and leaves out the messages a worker took and has not begun."""
    return store.queue_depth() == 0 and store.broker.hlen(store.keys.kombu_unacked) == 0


def small_images(folder: Path, count: int, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [imagegen.save(folder / f"{prefix}{i:03d}.png", size=(48, 48), seed=i) for i in range(count)]


def submit(settings: Settings, paths: list[Path], **options) -> str:
    store = ResultStore.from_settings(settings)
    return enqueue.submit([str(p) for p in paths], settings=settings, store=store, **options).job


def assert_exactly_one_record_each(settings: Settings, job: str, paths: list[Path]) -> list[dict]:
    store = ResultStore.from_settings(settings)
    records = list(store.iter_results(job))
    status = store.status(job)
    assert status.state == "done" and status.processed == status.total == len(paths)
    assert [r["image"] for r in records] == list(range(len(paths)))
    assert [r["path"] for r in records] == [str(p) for p in paths]
    return records


HOOKS = str(Path(__file__).resolve().parent.parent / "hooks")


def hook_env(**hooks: str) -> dict[str, str]:
    """The environment of a worker with test hooks (tests/hooks/sitecustomize.py), e.g. ``TEST_HOOK_CRASH_ON``."""
    python_path = os.pathsep.join(p for p in (HOOKS, os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": python_path, **hooks}


def crash_hook_env(text: str, while_: str = "decoding") -> dict[str, str]:
    """The environment of a worker that dies decoding (or hashing, for --skip-known) any file whose path
    contains ``text``."""
    return hook_env(TEST_HOOK_CRASH_ON=text, TEST_HOOK_CRASH_WHILE=while_)
