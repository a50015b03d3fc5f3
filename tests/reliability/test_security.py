"""The queue accepts JSON only: a pickled message is refused and nothing in it runs."""

from __future__ import annotations

import os

import pytest

from imgq.celery_config import celery_config, queue_name
from imgq.contract import TASK_CLASSIFY_BATCH
from imgq.results.store import ResultStore
from tests.reliability.conftest import wait_until

pytestmark = pytest.mark.slow


class Exploit:
    """Unpickling this creates a file: the proof that a worker ran code from a message."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_message_is_refused_and_runs_nothing(live_worker, worker_settings, tmp_path):
    from celery import Celery

    marker = tmp_path / "pwned"
    attacker = Celery("attacker", set_as_current=False)
    attacker.conf.update({**celery_config(worker_settings), "task_serializer": "pickle",
                          "accept_content": ["pickle", "json"]})
    store = ResultStore.from_settings(worker_settings)
    log_size = os.path.getsize(live_worker.log_path)
    attacker.send_task(TASK_CLASSIFY_BATCH, args=[Exploit(str(marker))], queue=queue_name(worker_settings),
                       serializer="pickle")
    wait_until(lambda: store.queue_depth() == 0, 60, "the worker to take the message")
    wait_until(lambda: "pickle" in _log_since(live_worker.log_path, log_size), 30, "the refusal in the log")
    assert not marker.exists()
    assert "ContentDisallowed" in _log_since(live_worker.log_path, log_size)
    assert live_worker.process.poll() is None  # and the worker goes on


def _log_since(path, offset: int) -> str:
    with open(path, "rb") as log:
        log.seek(offset)
        return log.read().decode("utf-8", "replace")
