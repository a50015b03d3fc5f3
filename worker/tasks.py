"""The one task. Thin: parse the message, hand it to worker.batch with this process's runtime."""

from __future__ import annotations

import time

from imgq.contract import TASK_CLASSIFY_BATCH, BatchMessage
from worker.app import app, settings
from worker.batch import run_batch
from worker.metrics import METRICS
from worker.runtime import get_runtime


# No Celery retries: a batch whose task fails is re-queued by worker/reconcile.py, which also covers the
# cases Celery cannot see (a worker killed, a message lost with its connection).
@app.task(name=TASK_CLASSIFY_BATCH, bind=True)
def classify_batch(self, message: dict) -> int:
    runtime = get_runtime(settings, self.request.hostname)
    started = time.perf_counter()
    try:
        records = run_batch(BatchMessage.from_dict(message), runtime, worker=self.request.hostname)
    except Exception as exc:
        METRICS.batch_failed(exc)
        raise
    METRICS.observe_batch(records, time.perf_counter() - started)
    runtime.count_done(len(records))
    return len(records)
