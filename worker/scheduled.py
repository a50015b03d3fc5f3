"""The task `imgq beat` fires for a schedule: one tick of its incremental scan (imgq/schedules/tick.py).

A tick is a walk and a few Redis round trips per thousand files, then a job submitted like `imgq submit`
would: it takes a worker thread briefly, like a small batch, and never waits for the job it submits (the
next tick settles it). Beat sends it to the queue of the schedule's model (imgq/schedules/schedule.py), so it runs on a
worker of that model: a tick is taken only where its job will be.
"""

from __future__ import annotations

import functools
import logging

from imgq.contract import TASK_SCHEDULED_SCAN
from imgq.results.store import ResultStore
from imgq.schedules.schedule import ScheduleNotFound
from imgq.schedules.tick import tick
from worker.app import app, settings

log = logging.getLogger(__name__)


@functools.cache
def _store() -> ResultStore:
    return ResultStore.from_settings(settings)


# No retry: a tick that fails (Redis away) is followed by the next one, which scans the same files.
@app.task(name=TASK_SCHEDULED_SCAN)
def scheduled_scan(name: str) -> dict | None:
    """Run one tick of schedule ``name``; returns the run recorded in its history (None: no such schedule)."""
    try:
        run = tick(name, settings=settings, store=_store(), trigger="beat")
    except ScheduleNotFound:  # removed after beat sent this tick
        log.warning("Schedule %r no longer exists: tick ignored.", name)
        return None
    log.info("Schedule %r: %s %s", name, run["outcome"], run["job"] or run["reason"])
    return run
