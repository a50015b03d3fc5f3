"""One tick of a schedule: settle the previous run's job, walk, submit what is new or changed, record the run.

Run by the task `imgq beat` fires (worker/scheduled.py, on any worker of the namespace) and by
`imgq schedule run` (the CLI, here). A tick while the schedule's previous job is unfinished submits nothing
and is recorded as skipped: the next tick after that job finishes picks up everything that changed meanwhile,
and a backlog is not piled on workers that are already behind.

The job id of a tick is chosen, and written into the schedule as its job in flight, BEFORE the job is
committed: a tick that dies between committing its job and recording its run leaves the job in flight named,
and the next tick settles it instead of submitting the same files again. A job id that never got committed
reads as a deleted job, which taught nothing.

A tick's job keeps its records until the next tick has settled it, and only then starts its retention
(``hold_retention``): with an interval at least as long as the retention, the job would otherwise expire
before the tick that must read it, which would then learn nothing and submit the whole tree again.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict

import redis

from imgq.jobs import submit as submission
from imgq.labels import heads
from imgq.results.job import JobStatus
from imgq.results.store import JobNotFound, ResultStore
from imgq.schedules.scan_state import ScanState, ScanTally
from imgq.schedules.schedule import Schedule, ScheduleBook
from imgq.settings import Settings
from imgq.storage.errors import ListingError
from imgq.storage.roots import outside_roots
from imgq.storage.selection import Skipped
from imgq.storage.walk import iter_image_versions

TICK_LOCK_SECONDS = 120  # renewed every 1000 files walked; a tick that died frees its schedule after this

def tick(name: str, *, settings: Settings, store: ResultStore, trigger: str = "beat") -> dict:
    """One tick of schedule ``name``: returns the run it recorded. ``trigger``: ``beat`` (skipped while the
    schedule is paused) or ``manual`` (`imgq schedule run`, which runs a paused schedule too).

    Raises ScheduleNotFound (a tick queued before the schedule was removed), or redis/kombu errors.
    """
    book = ScheduleBook(store, settings)
    book.get(name)  # raises ScheduleNotFound, before anything is recorded
    lock = book.tick_lock(name, TICK_LOCK_SECONDS)
    if not lock.acquire(blocking=False):
        return book.record_run(name, _run(trigger, "skipped", reason="another tick of this schedule was running"))
    try:
        return _tick_locked(book, book.get(name), settings, trigger, lock.reacquire)
    finally:
        with contextlib.suppress(redis.exceptions.LockError):  # expired during a very long walk: nothing to free
            lock.release()


def _tick_locked(book: ScheduleBook, schedule: Schedule, settings: Settings, trigger: str, keepalive) -> dict:
    store = book.store
    if schedule.paused and trigger == "beat":
        return book.record_run(schedule.name, _run(trigger, "skipped", reason="paused"))
    scan = ScanState.from_settings(settings, schedule.name, schedule.model)
    settled = None
    if schedule.pending_job:
        status = _status_or_none(store, schedule.pending_job)
        if status is not None and not status.finished:
            reason = f"job {status.id} still {status.state}"
            return book.record_run(schedule.name, _run(trigger, "skipped", reason=reason))
        records = store.iter_records(status.id) if status else ()  # a deleted job taught nothing
        settled = asdict(scan.settle(records, schedule.max_retries))
        if status is not None:  # read: now its retention may start (it was held: see submit below)
            store.release_retention(status.id)
        book.set_pending(schedule.name, None)
    scan.clear_pending()  # files of a submission that failed half-way
    if forbidden := outside_roots(schedule.paths, settings.allowed_roots):
        # On a worker with IMGQ_ALLOWED_ROOTS, a schedule scans only inside them, as the worker reads only there.
        reason = f"{forbidden} is outside this worker's allowed roots (IMGQ_ALLOWED_ROOTS)"
        return book.record_run(schedule.name, _run(trigger, "skipped", reason=reason, settled=settled))
    found = ScanTally()
    skipped = Skipped()
    listed = iter_image_versions(schedule.paths, schedule.path_filter, skipped)  # s3: versions from LIST pages
    images = scan.select_versioned(listed, schedule.max_retries, found, keepalive=keepalive)
    try:
        head = heads.fetch(store.redis, store.keys, schedule.head) if schedule.head else None
    except heads.HeadError as exc:
        return book.record_run(schedule.name, _run(trigger, "skipped", reason=str(exc), settled=settled))
    job = submission.new_job_id()
    book.set_pending(schedule.name, job)  # before the commit: see the module's docstring
    try:
        submitted = submission.submit(images, settings=settings, store=store, name=schedule.name, job=job,
                                      top_k=schedule.top_k, batch_size=schedule.batch_size,
                                      params={"schedule": schedule.name}, hold_retention=True, head=head,
                                      skipped=skipped, model=schedule.model, weights=schedule.weights,
                                      precision=schedule.precision, embeddings=schedule.embeddings)
    except submission.EmptySelection:
        book.set_pending(schedule.name, None)
        return book.record_run(schedule.name, _run(trigger, "empty", found=found, settled=settled, skipped=skipped))
    except ListingError as exc:  # an s3:// prefix that cannot be listed (no bucket, refused credentials, no answer)
        book.set_pending(schedule.name, None)
        scan.clear_pending()
        return book.record_run(schedule.name, _run(trigger, "skipped", reason=str(exc), settled=settled))
    return book.record_run(schedule.name, _run(trigger, "submitted", job=submitted.job, found=found, settled=settled,
                                               batches=submitted.batches, skipped=skipped))


def _status_or_none(store: ResultStore, job: str) -> JobStatus | None:
    try:
        return store.status(job)
    except JobNotFound:
        return None


def _run(trigger: str, outcome: str, *, reason: str = "", job: str | None = None, found: ScanTally | None = None,
         settled: dict | None = None, batches: int = 0, skipped: Skipped | None = None) -> dict:
    """A run as recorded: outcome ``submitted`` (a job), ``empty`` (nothing new: no job) or ``skipped`` (no
    walk). ``skipped_files``/``skipped_kinds``: what the walk left out for not being images
    (imgq.storage.walk.Skipped)."""
    return {"at": time.time(), "trigger": trigger, "outcome": outcome, "reason": reason, "job": job,
            "batches": batches, "found": asdict(found) if found else None, "settled": settled,
            "skipped_files": skipped.total if skipped else 0, "skipped_kinds": skipped.kinds() if skipped else ""}
