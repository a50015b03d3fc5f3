"""The one task. Thin: parse the message, hand it to worker.batch with this process's runtime."""

from __future__ import annotations

from imgq.contract import TASK_CLASSIFY_BATCH, BatchMessage
from worker.app import app
from worker.batch import run_batch
from worker.runtime import get_runtime


@app.task(name=TASK_CLASSIFY_BATCH, bind=True)
def classify_batch(self, message: dict) -> int:
    runtime = get_runtime(self.request.hostname)
    written = run_batch(BatchMessage.from_dict(message), classifier=runtime.classifier, store=runtime.store,
                        settings=runtime.settings, pool=runtime.pool, worker=self.request.hostname)
    runtime.images_done += written
    return written
