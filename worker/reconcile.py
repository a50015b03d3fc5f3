"""Finding lost batches and queueing them again, so that every job completes.

Redis gives an unacknowledged batch back only after the visibility timeout (an hour by default) and
kombu's periodic restore check, even when a new worker is already waiting. So every worker runs this
loop, and one at a time (a lock in Redis) it queues again, for each job still active:

- the batches held by a worker whose heartbeat has expired (it was killed, or its machine lost), or
  that a live worker no longer holds (its task failed while Redis was unreachable, say);
- when none of the job's messages waits in the queue (as many deliveries begun as messages published:
  imgq/jobs/deliveries.py ``waiting``, so a job behind another job's backlog is judged on its own), nothing of
  the job is in a live worker's hands, and no record came for ``reconcile_seconds``: every batch with an
  image still lacking a record (a message lost another way). A job with no record for a whole visibility
  timeout is treated so whatever its count says (a message dropped before any worker began it), and so is,
  once, a job whose submit failed part-way (still marked ``publishing``: imgq/results/store.py ``commit_job``), whose
  count says nothing of what reached the queue. The queue is the job's model's queue, or that of the weights and
  precision it asked for (imgq.celery_config.queue_name); a job whose model (with its weights, at its precision)
  no live worker serves is not stalled but waiting: its messages stay in its queue until such a worker starts.

Queueing a batch twice is harmless: a batch whose images all have records is skipped, and records are
keyed per image, so the later of two deliveries overwrites instead of adding.
"""

from __future__ import annotations

import logging
import time

from imgq.jobs.queue import publish, refs
from imgq.results.store import JobNotFound

log = logging.getLogger(__name__)


def reconcile_forever(runtime) -> None:
    period = runtime.settings.reconcile_seconds
    while True:
        time.sleep(period)
        try:
            if _take_turn(runtime, period):
                reconcile(runtime)
                runtime.store.forget_expired()
        except Exception as exc:  # Redis restarting: try again next period
            log.warning("Reconciling failed: %s", exc)


def _take_turn(runtime, period: int) -> bool:
    """True for the one worker allowed to reconcile during this period."""
    return runtime.store.take_reconcile_turn(runtime.worker_id, period)


def reconcile(runtime, now: float | None = None) -> int:
    """Queue again the lost batches of every active job; returns how many batches were queued."""
    now = time.time() if now is None else now
    store, settings = runtime.store, runtime.settings
    lost = []
    for job in store.active_jobs():
        lost += _lost_batches_or_none(runtime, job, now)
    if lost:
        log.warning("Queueing again %d lost batches", len(lost))
        publish(refs(lost), settings)
    return len(lost)


def _lost_batches_or_none(runtime, job: str, now: float) -> list[dict]:
    """``_lost_batches``, or none for a job that cannot be read (its hash gone: deleted during the pass,
    evicted; or a record that does not parse), so that one bad job never stops the others. An id whose hash
    is gone leaves the active set. Redis being away still fails the pass."""
    try:
        return _lost_batches(runtime, job, now)
    except (JobNotFound, ValueError, KeyError, TypeError) as exc:
        dropped = runtime.store.drop_if_gone(job)
        log.warning("Reconciling job %s skipped: %s%s", job, exc, " (dropped from the active jobs)" if dropped else "")
        return []


def _lost_batches(runtime, job: str, now: float) -> list[dict]:
    store, deliveries = runtime.store, runtime.deliveries
    inflight = deliveries.inflight(job)
    grace = 2 * runtime.settings.heartbeat_seconds  # a batch taken since the last heartbeat is not in it yet
    orphans = [batch for batch, held in inflight.items()
               if now - held["since"] > grace and not _still_held(store, held["worker"], job, batch)]
    for batch in orphans:
        deliveries.end(job, batch)
    lost = [store.batch(job, batch) for batch in orphans]
    if len(orphans) == len(inflight) and _stalled(runtime, job, now):
        known = set(orphans)
        lost += [m for m in store.unfinished_batches(job) if m["batch"] not in known]
    return [m for m in lost if m is not None]


def _still_held(store, worker: str, job: str, batch: int) -> bool:
    """True when ``worker`` is alive and its last heartbeat lists the batch as in hand."""
    heartbeat = store.heartbeat(worker)
    return heartbeat is not None and heartbeat.holds(job, batch)


def _stalled(runtime, job: str, now: float) -> bool:
    """No record for ``reconcile_seconds`` and none of the job's messages waiting (or no record for a whole
    visibility timeout)."""
    status, settings = runtime.store.status(job), runtime.settings
    quiet = now - (status.last_record_at or status.created)
    if (status.finished or quiet < settings.reconcile_seconds
            or not runtime.store.serving(status.model, status.weights, status.precision)):
        return False
    if runtime.deliveries.take_unpublished(job):  # its submit failed part-way: its count says nothing
        return True
    # None of the job's messages waits when none was published unbegun, or when the queue is empty: a message
    # can be lost before any worker begins it (kombu pops it, then fails to record it as unacknowledged, as
    # during an OOM), and the count alone would then wait for a whole visibility timeout.
    return (quiet >= settings.visibility_timeout or runtime.deliveries.waiting(job) <= 0
            or runtime.store.queue_depth(status.model, status.weights, status.precision) == 0)
