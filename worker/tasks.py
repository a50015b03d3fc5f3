"""The one task. Thin: parse the message, hand it to worker.batch with this process's runtime."""

from __future__ import annotations

import redis

from imgq.contract import TASK_CLASSIFY_BATCH, BatchMessage
from worker.app import app
from worker.batch import run_batch
from worker.runtime import get_runtime


# Redis going away mid-batch (a restart, a failover) is retried with backoff: the batch is published
# again and rewrites its records, which the store makes idempotent.
@app.task(name=TASK_CLASSIFY_BATCH, bind=True, autoretry_for=(redis.ConnectionError, redis.TimeoutError),
          retry_backoff=2, retry_backoff_max=60, max_retries=20)
def classify_batch(self, message: dict) -> int:
    runtime = get_runtime(self.request.hostname)
    records = run_batch(BatchMessage.from_dict(message), runtime, worker=self.request.hostname)
    runtime.count_done(len(records))
    return len(records)
