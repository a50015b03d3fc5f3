"""Who is classifying which batch, and how many times it was delivered: what the broker does not tell.

Redis hands a batch again when its worker vanished (after the visibility timeout), but keeps no count and
no owner. The worker writes both here so that imgq can re-queue a dead worker's batches without waiting an
hour, and find the one image that kills every worker that tries it.

A delivery is *lost* when it began and never finished and its worker is gone: only lost deliveries count
towards isolating a batch, so `imgq requeue` (or the reconciler re-queueing a batch that a slow but live
worker still holds) never does. A suspect names the process that set it (worker id and start time): it
counts only once that process is gone, so two deliveries decoding at once never accuse each other's images.
"""

from __future__ import annotations

import json
import time

import redis

from imgq.keys import Keys

# The attempts hash holds, per batch, "<batch>": deliveries begun and "ended:<batch>": deliveries that
# finished (written by the scripts below), and "published": the job's messages ever sent to the queue.
_PUBLISHED = "published"  # attempts-hash field: the job's batch messages ever sent to the queue


# Count a job's published messages only while the job exists, and give a count made after the job finished
# the job's remaining retention: a publish after a delete (or a requeue of an expired job) must not leave an
# attempts hash behind, without a TTL, for ever. KEYS: job, attempts. ARGV: the number published, the field.
_ADD_PUBLISHED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[2], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""


def add_published(client: redis.Redis, keys: Keys, counts: dict[str, int]) -> None:
    """Count ``counts[job]`` more messages of each job as sent to the queue (imgq/jobs/queue.py publish); nothing
    for a job that is gone."""
    if counts:
        script = client.register_script(_ADD_PUBLISHED)
        pipe = client.pipeline(transaction=False)
        for job, n in counts.items():
            script(keys=[keys.job(job), keys.attempts(job)], args=[n, _PUBLISHED], client=pipe)
        pipe.execute()

# Delete a suspect only if it is still the one this delivery set: another may have taken it over since.
_CLEAR_IF_MINE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


# The writes of a delivery, only while the job exists: a batch of a deleted job must leave no key behind.
# KEYS: job, attempts, inflight. ARGV: batch, the holder's entry. Returns false for no job, else
# {previous holder or false, deliveries, deliveries ended}.
_BEGIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local previous = redis.call('HGET', KEYS[3], ARGV[1])
local attempts = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local ended = redis.call('HGET', KEYS[2], 'ended:' .. ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return {previous, attempts, ended}
"""

# KEYS: job, attempts, inflight. ARGV: batch.
_FINISH = """
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[2], 'ended:' .. ARGV[1], 1) end
"""

# KEYS: job, suspects. ARGV: image, entry.
_SUSPECT = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
"""

# KEYS: job, attempts. ARGV: the published field. Returns 1 when the job was marked ``publishing``.
_TAKE_UNPUBLISHED = """
if redis.call('HDEL', KEYS[1], 'publishing') == 0 then return 0 end
local begun = 0
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  if string.match(fields[i], '^%d+$') then begun = begun + tonumber(fields[i + 1]) end
end
redis.call('HSET', KEYS[2], ARGV[1], begun)
return 1
"""


class NoSuchJob(LookupError):
    """The job of a delivery is gone (deleted, expired): there is nothing to do for it."""


class Deliveries:
    def __init__(self, client: redis.Redis, keys: Keys):
        self.redis = client
        self.keys = keys
        self._clear_if_mine = client.register_script(_CLEAR_IF_MINE)
        self._begin = client.register_script(_BEGIN)
        self._finish = client.register_script(_FINISH)
        self._suspect = client.register_script(_SUSPECT)
        self._take_unpublished = client.register_script(_TAKE_UNPUBLISHED)

    def begin(self, job: str, batch: int, worker_id: str) -> tuple[int, int]:
        """A worker starts a batch; returns ``(deliveries, lost)``: how many times it has been delivered, this
        one included, and how many of the earlier ones were lost (began, never finished, worker gone).

        Raises NoSuchJob when the job is gone: nothing is written then."""
        holder = json.dumps({"worker": worker_id, "since": time.time()})
        found = self._begin(keys=self._keys(job), args=[batch, holder])
        if not found:
            raise NoSuchJob(job)
        previous, attempts, ended = found
        unfinished = attempts - 1 - int(ended or 0)
        if previous is not None and self.redis.exists(self.keys.worker(json.loads(previous)["worker"])):
            unfinished -= 1  # a live worker still holds it: a duplicate delivery, not a lost one
        return attempts, max(unfinished, 0)

    def finish(self, job: str, batch: int) -> None:
        """The worker is done with its delivery (records stored, or skipped): it was not lost. Counted only
        while the job exists."""
        self._finish(keys=self._keys(job), args=[batch])

    def _keys(self, job: str) -> list[str]:
        return [self.keys.job(job), self.keys.attempts(job), self.keys.inflight(job)]

    def end(self, job: str, batch: int) -> None:
        """Nobody holds the batch any more (the reconciler, for a dead worker's batch)."""
        self.redis.hdel(self.keys.inflight(job), batch)

    def inflight(self, job: str) -> dict[int, dict]:
        """Batch number -> ``{worker, since}``: who took it, and when."""
        return {int(batch): json.loads(held) for batch, held in self.redis.hgetall(self.keys.inflight(job)).items()}

    def attempts(self, job: str) -> dict[int, int]:
        """Batch number -> deliveries so far."""
        return {int(batch): int(n) for batch, n in self.redis.hgetall(self.keys.attempts(job)).items()
                if batch.isdigit()}

    def waiting(self, job: str) -> int:
        """How many of the job's messages sent to the queue no worker has begun: published minus begun.

        Zero or less means none of the job's batches waits in the queue (a redelivery by the broker itself
        begins without a publish). Jobs submitted before this count existed read as published 0.
        """
        fields = self.redis.hgetall(self.keys.attempts(job))
        begun = sum(int(n) for batch, n in fields.items() if batch.isdigit())
        return int(fields.get(_PUBLISHED, 0)) - begun

    def take_unpublished(self, job: str) -> bool:
        """True, once, for a job whose submit failed part-way (its hash still says ``publishing``: see
        ``ResultStore.commit_job``): the mark is taken away and the job's published count is set to the
        deliveries begun, since nobody knows how many of the counted messages reached the queue. The caller
        queues the job's unfinished batches again (and counts them). False for every other job."""
        return bool(self._take_unpublished(keys=[self.keys.job(job), self.keys.attempts(job)], args=[_PUBLISHED]))

    def suspect(self, job: str, image: int, worker_id: str, started_at: float) -> str:
        """About to decode ``image`` alone: if the worker dies now, the next delivery will know which.

        Returns the entry, for ``clear_suspect``.
        """
        entry = json.dumps({"worker": worker_id, "started_at": started_at, "at": time.time()})
        self._suspect(keys=[self.keys.job(job), self.keys.suspects(job)], args=[image, entry])
        return entry

    def clear_suspect(self, job: str, image: int, entry: str) -> None:
        """The image was decoded: remove its suspect entry, if it is still ``entry`` (the one set)."""
        self._clear_if_mine(keys=[self.keys.suspects(job)], args=[image, entry])

    def suspects(self, job: str) -> dict[int, dict]:
        """Image -> ``{worker, started_at, at}``: images being decoded alone by that process, or when it died."""
        return {int(image): json.loads(entry) for image, entry in self.redis.hgetall(self.keys.suspects(job)).items()}

    def died_on(self, entry: dict, silent_after: float) -> bool:
        """True when the process that set the suspect ``entry`` is gone: no heartbeat under its worker id, one
        from another process with the same id (a restarted container keeps its host name and pid), or one
        that has not been sent again for ``silent_after`` seconds. A live worker's heartbeat thread beats
        while it decodes; a dead one's key outlives it by up to three beats, long enough for a worker restarted
        at once to take its batch and be killed by the same image again."""
        raw = self.redis.get(self.keys.worker(entry["worker"]))
        if raw is None:
            return True
        beat = json.loads(raw)
        return beat.get("started_at") != entry["started_at"] or beat.get("sent_at", 0.0) < time.time() - silent_after
