"""The one task. Thin: parse the message, hand it to worker.batches.batch with this process's runtime."""

from __future__ import annotations

import logging
import time

import redis
from celery.exceptions import Reject

from imgq.contract import REF_VERSION, TASK_CLASSIFY_BATCH, BatchMessage, BatchRef, serves_precision, serves_weights
from imgq.jobs.queue import publish
from imgq.results.store import ResultStore
from imgq.storage.errors import SourceUnavailable
from worker.app import app, settings
from worker.batches.batch import run_batch
from worker.metrics import METRICS
from worker.process import get_runtime

log = logging.getLogger(__name__)


def batch_message(payload: dict, store: ResultStore) -> BatchMessage | None:
    """The batch a task names (a BatchRef, read from the job's batch list), or carries whole (a message of
    version 1, from an older producer); None when its job is gone. Raises MessageError."""
    if isinstance(payload, dict) and payload.get("v") == REF_VERSION:
        ref = BatchRef.from_dict(payload)
        stored = store.batch(ref.job, ref.batch)
        return None if stored is None else BatchMessage.from_dict(stored)
    return BatchMessage.from_dict(payload)


SOURCE_PAUSE_SECONDS = 2

# No Celery retries: a batch whose task fails is re-queued by worker/reconcile.py, which also covers the
# cases Celery cannot see (a worker killed, a message lost with its connection).
# A task that failed because Redis did not take its writes (worker/batches/batch.py waits minutes first) gives its
# message back (Reject with requeue) instead of failing: Celery acknowledges a failed task's message (its
# task_acks_on_failure_or_timeout), and with acks_on_failure off it would reject it without requeue, which
# drops it too. The message goes back to the queue, or, if Redis refuses even that, stays in kombu's unacked
# set until the visibility timeout returns it. A batch whose images' store (s3://) did not answer goes back the
# same way: none of its images got a record for it, and the next delivery reads them again.
@app.task(name=TASK_CLASSIFY_BATCH, bind=True)
def classify_batch(self, payload: dict) -> int:
    runtime = get_runtime(settings, self.request.hostname)
    started = time.perf_counter()
    try:
        message = batch_message(payload, runtime.store)
        if message is None:  # its job was deleted or has expired: nothing to do, nothing to write
            log.info("Batch %s: no such job any more, skipped", payload)
            return 0
        if (message.model != runtime.model or not serves_weights(runtime.classifier.weights_id, message.weights)
                or not serves_precision(runtime.job_precision, message.precision)):
            return _send_to_its_queue(message, runtime)
        records = run_batch(message, runtime, worker=self.request.hostname)
    except redis.RedisError as exc:
        METRICS.batch_failed(exc)
        raise Reject(f"Redis did not take the batch's writes: {exc}", requeue=True) from exc
    except SourceUnavailable as exc:
        METRICS.batch_failed(exc)
        # A pause, so that a store that is down is not asked again at once by every worker in turn; boto3 has
        # already retried each request with backoff.
        log.warning("Batch %s: the image store did not answer (%s); handing it back in %d s", payload, exc,
                    SOURCE_PAUSE_SECONDS)
        time.sleep(SOURCE_PAUSE_SECONDS)
        raise Reject(f"The image store did not answer: {exc}", requeue=True) from exc
    except Exception as exc:
        METRICS.batch_failed(exc)
        raise
    METRICS.observe_batch(records, time.perf_counter() - started)
    runtime.count_done(len(records))
    return len(records)


def _send_to_its_queue(message: BatchMessage, runtime) -> int:
    """A batch of a job that asked for another model, for weights this worker has not, or for a precision it
    does not serve jobs at now, in one of this worker's queues (sent there by hand, by a sender that routed by
    model alone, or taken just before the worker's precision moved: worker/queues.py): never classified with
    the wrong model, weights or precision, never lost, but sent on to the queue of what it asked for, which
    this worker does not consume. There it waits for a worker that serves it (`imgq status JOB` says so)."""
    if message.model != runtime.model:
        log.warning("Batch %d of job %s is for model %s, not %s: sent to that model's queue", message.batch,
                    message.job, message.model, runtime.model)
    elif not serves_weights(runtime.classifier.weights_id, message.weights):
        log.warning("Batch %d of job %s asks for weights %s, not %s: sent to the queue of those weights",
                    message.batch, message.job, message.weights, runtime.classifier.weights_id)
    else:
        log.warning("Batch %d of job %s asks for %s, and this worker serves jobs at %s: sent to the queue of %s",
                    message.batch, message.job, message.precision, runtime.job_precision or "no precision",
                    message.precision)
    publish([BatchRef(message.job, message.batch, message.model, message.weights, message.precision)],
            runtime.settings)
    return 0
