"""Who is classifying which batch, and how many times it was delivered: what the broker does not tell.

Redis hands a batch again when its worker vanished (after the visibility timeout), but keeps no count and
no owner. The worker writes both here so that imgq can re-queue a dead worker's batches without waiting an
hour, and find the one image that kills every worker that tries it.
"""

from __future__ import annotations

import json
import time

import redis

from imgq.keys import Keys


class Deliveries:
    def __init__(self, client: redis.Redis, keys: Keys):
        self.redis = client
        self.keys = keys

    def begin(self, job: str, batch: int, worker_id: str) -> int:
        """A worker starts a batch; returns how many times it has been delivered, this one included."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrby(self.keys.attempts(job), batch, 1)
        pipe.hset(self.keys.inflight(job), batch, json.dumps({"worker": worker_id, "since": time.time()}))
        attempts, _ = pipe.execute()
        return attempts

    def end(self, job: str, batch: int) -> None:
        """The batch's records are stored (or it was skipped): nobody holds it any more."""
        self.redis.hdel(self.keys.inflight(job), batch)

    def inflight(self, job: str) -> dict[int, dict]:
        """Batch number -> ``{worker, since}``: who took it, and when."""
        return {int(batch): json.loads(held) for batch, held in self.redis.hgetall(self.keys.inflight(job)).items()}

    def attempts(self, job: str) -> dict[int, int]:
        """Batch number -> deliveries so far."""
        return {int(batch): int(n) for batch, n in self.redis.hgetall(self.keys.attempts(job)).items()}

    def suspect(self, job: str, image: int, worker_id: str) -> None:
        """About to decode ``image`` alone: if the worker dies now, the next delivery will know which."""
        self.redis.hset(self.keys.suspects(job), image, worker_id)

    def clear_suspect(self, job: str, image: int) -> None:
        self.redis.hdel(self.keys.suspects(job), image)

    def suspects(self, job: str) -> set[int]:
        """Images that were being decoded alone when their worker died."""
        return {int(image) for image in self.redis.hkeys(self.keys.suspects(job))}

    def forget(self, job: str) -> None:
        self.redis.delete(self.keys.attempts(job), self.keys.inflight(job), self.keys.suspects(job))
