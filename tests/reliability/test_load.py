"""Load: 10 producer processes submitting 20 jobs each at the same time against 2 workers."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from imgq.results.store import ResultStore
from tests.reliability.conftest import small_images, wait_until

pytestmark = pytest.mark.slow

PRODUCERS, JOBS_EACH, IMAGES_PER_JOB = 10, 20, 3

# Each producer is its own process running the real CLI, 20 times over.
PRODUCER = """
import sys
from producer.cli import cli
for i in range(int(sys.argv[2])):
    cli.main(["submit", sys.argv[1], "--name", f"load-{sys.argv[3]}-{i}"], standalone_mode=False)
"""


def test_concurrent_producers_and_two_workers(fast_settings, start_worker, tmp_path):
    folder = tmp_path / "in"
    paths = small_images(folder, IMAGES_PER_JOB)
    start_worker()
    start_worker()
    env = {**fast_settings.as_env(), "PATH": "/usr/bin:/bin"}
    started = time.monotonic()
    producers = [subprocess.Popen([sys.executable, "-c", PRODUCER, str(folder), str(JOBS_EACH), str(n)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for n in range(PRODUCERS)]
    outputs = [p.communicate(timeout=300) for p in producers]
    assert [p.returncode for p in producers] == [0] * PRODUCERS, [err for _, err in outputs]
    jobs = [line for out, _ in outputs for line in out.split()]
    assert len(set(jobs)) == PRODUCERS * JOBS_EACH

    store = ResultStore.from_settings(fast_settings)
    wait_until(lambda: all(store.status(job).finished for job in jobs), 600, "every job to complete")
    elapsed = time.monotonic() - started
    workers_seen = set()
    for job in jobs:
        records = list(store.iter_results(job))
        assert [r["image"] for r in records] == list(range(IMAGES_PER_JOB))
        assert sorted(r["path"] for r in records) == sorted(str(p) for p in paths)
        assert {r["status"] for r in records} == {"ok"}  # no error that the input did not cause
        workers_seen |= {r["worker"] for r in records}
    assert len(workers_seen) == 2  # both workers took part
    figures = {"jobs": len(jobs), "images": len(jobs) * IMAGES_PER_JOB, "seconds": round(elapsed, 1),
               "images_per_second": round(len(jobs) * IMAGES_PER_JOB / elapsed, 1)}
    print("load figures:", json.dumps(figures))
