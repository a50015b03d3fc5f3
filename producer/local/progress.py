"""Watching a job: a progress bar on stderr until every image has a record (or the job is cancelled)."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from imgq.results.job import JobStatus
from imgq.results.store import ResultStore
from imgq.text import printable
from producer.local.signals import raise_if_interrupted, signals_between_polls

POLL_SECONDS = 0.5
RECONNECT_SECONDS = 1.0


def poll_status(store: ResultStore, job: str) -> JobStatus:
    """The job's status, waiting through a Redis restart instead of failing (JobNotFound still raises)."""
    while True:
        raise_if_interrupted()
        try:
            return store.status(job)
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(RECONNECT_SECONDS)


def wait(store: ResultStore, job: str, *, show: bool = True, timeout: float | None = None,
         check: Callable[[], None] | None = None) -> JobStatus:
    """Block until the job is done or cancelled; returns its last status. Raises TimeoutError.

    ``check`` runs at every poll and may raise to stop waiting (say, the worker we started has died).
    Ctrl-C is taken between polls (producer.local.signals.signals_between_polls) and raises KeyboardInterrupt;
    SIGTERM and SIGHUP too, as Terminated, where the command turned them into it (`imgq classify`).
    """
    with signals_between_polls():
        return _wait(store, job, show, timeout, check)


def _wait(store: ResultStore, job: str, show: bool, timeout: float | None,
          check: Callable[[], None] | None) -> JobStatus:
    deadline = None if timeout is None else time.monotonic() + timeout
    status = poll_status(store, job)
    if not show:
        while not status.finished:
            _check_deadline(deadline, status, check)
            time.sleep(POLL_SECONDS)
            status = poll_status(store, job)
        return status
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[failed]} failed"), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:  # stdout stays for data
        # The job's name, a user's: without control characters, and not read as rich's markup ("[link=...]").
        task = bar.add_task(escape(printable(status.name)), total=status.total, failed=0, rate="")
        while True:
            rate = f"{status.rate:.1f} img/s" if status.rate else ""
            bar.update(task, completed=status.processed, failed=status.failed, rate=rate)
            if status.finished:
                return status
            _check_deadline(deadline, status, check)
            time.sleep(POLL_SECONDS)
            status = poll_status(store, job)


def _check_deadline(deadline: float | None, status: JobStatus, check: Callable[[], None] | None) -> None:
    raise_if_interrupted()
    if check is not None:
        check()
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(f"Job {status.id} not finished in time: {status.processed}/{status.total} images.")
