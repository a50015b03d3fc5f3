"""A worker whose inference thread is gone says so, fails its health check and exits; its job completes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from imgq.results.store import ResultStore
from tests.processes import clean_env
from tests.reliability.conftest import assert_exactly_one_record_each, hook_env, small_images, submit, wait_until

pytestmark = pytest.mark.slow


def test_a_dead_inference_thread_fails_the_health_check_and_ends_the_worker(fast_settings, start_worker, tmp_path):
    paths = small_images(tmp_path / "in", 12)
    store = ResultStore.from_settings(fast_settings)
    broken = start_worker(**hook_env(TEST_HOOK_KILL_INFERENCE="1"))
    job = submit(fast_settings, paths)
    assert broken.process.wait(timeout=60) == 3  # worker/process.py EXIT_INFERENCE_GONE
    lines = [line for line in broken.log_path.read_text().splitlines() if line.startswith("imgq worker: ")]
    assert lines[-1].startswith("imgq worker: the inference thread died") and lines[-1].endswith("exiting")
    health = subprocess.run([sys.executable, "-m", "worker.health"], env=clean_env(**fast_settings.as_env()),
                            capture_output=True, text=True, timeout=60)
    assert health.returncode == 1 and health.stdout.startswith("unhealthy: no live worker"), health.stdout
    start_worker()
    wait_until(lambda: store.status(job).finished, 180, "the job to complete on a sound worker")
    records = assert_exactly_one_record_each(fast_settings, job, paths)
    # The broken worker exited before writing a record: its batches were queued again, for the sound one.
    assert {r["status"] for r in records} == {"ok"}
