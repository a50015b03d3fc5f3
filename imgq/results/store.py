"""The results store: jobs and their result records, in Redis. Every read and write of imgq's job keys goes
through here (and the few store modules beside it: deliveries, known, scan_state, schedules).

What the store promises (``tests/test_store.py`` checks each):

- **A job exists only whole.** It becomes visible (``status``, ``list_jobs``) only when ``commit_job`` ran:
  a submission that failed half-way leaves no job, and its staged batches expire. A worker's write to a job
  that is gone (deleted, expired) writes nothing, atomically (a Lua script checks the job first), so that
  ``delete`` leaves no key behind whatever is still queued or in flight; and a key that is not a whole job
  record reads as no job, never as a crash.
- **Exactly one record per image.** Records are keyed by (job, image id), so a redelivered batch overwrites
  the records it wrote before instead of adding to them.
- **Counts are derived**, from the records themselves (number of records, set of failed image ids), never
  incremented, so a redelivery cannot count an image twice.
- **A job is done when every image has a record**; ``cancelled`` when cancelled before that. A finished job
  keeps its keys for its retention (``Settings.retention``) and then expires whole; an unfinished job's keys
  never carry a TTL.
- **Each fact is kept once.** A record holds what differs from image to image (imgq/results/packing.py); its path
  is in the job's batch list, its provenance (model, weights, precision, runtime, worker) once in the job's
  hash. Readers get whole ``ResultRecord`` values back, in submission order.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from itertools import islice

import redis

from imgq.contract import MODEL_NAME, Heartbeat, ResultRecord, model_queue
from imgq.keys import Keys
from imgq.results import packing
from imgq.results.job import JobStatus, parse_job
from imgq.results.sink_cleanup import SinkLeft
from imgq.settings import Settings

STAGING_TTL = 24 * 3600
# Staged batches of a submission that never committed disappear after a day.

READ_CHUNK = 1000

EXPIRED_KEPT = 10_000
# Ids of expired jobs remembered (Keys.expired), the most recent: ~0.3 MB of Redis at most.


class JobNotFound(LookupError):
    def __init__(self, job: str):
        super().__init__(f"No job {job!r} in the results store.")
        self.job = job


# The end of a script that wrote records (``processed`` of the job's images now have one): finish the job
# when every image has a record, and start its retention. KEYS as _job_keys; ARGV[1] now, ARGV[2] the job id.
_FINISH = """
redis.call('HSET', KEYS[1], 'last_record_at', ARGV[1])
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
if total and processed >= total and redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[1]) == 1 then
  redis.call('SREM', KEYS[4], ARGV[2])
  local retention = tonumber(redis.call('HGET', KEYS[1], 'retention') or '0')
  if retention > 0 then
    for i = 1, #KEYS do if i ~= 4 then redis.call('EXPIRE', KEYS[i], retention) end end
  end
end
return processed
"""

# Store a batch's records, if the job still exists. KEYS: _job_keys. ARGV: now, job id, provenance JSON, the class
# names the packed records leave out (a JSON object index -> name, "{}" for none: a user's model's classes, kept
# once per provenance as 'cls:<provenance>:<index>' in the job's hash), then (image id, "ok"|"error"|"crashed",
# packed record) per record: a "crashed" record (worker_crashed) is written only where the image has none, so it
# never replaces a record another delivery stored meanwhile. Returns the number of records, -1 for no job, -2
# (nothing written) when a class name differs from the one kept for its index (the records must then carry
# their names).
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local prov = redis.call('HGET', KEYS[1], 'prov:' .. ARGV[3])
if not prov then
  prov = redis.call('HINCRBY', KEYS[1], 'nprov', 1) - 1
  redis.call('HSET', KEYS[1], 'prov:' .. ARGV[3], prov, 'provn:' .. prov, ARGV[3])
end
local names = {}
for index, name in pairs(cjson.decode(ARGV[4])) do
  local field = 'cls:' .. prov .. ':' .. index
  local kept = redis.call('HGET', KEYS[1], field)
  if kept and kept ~= name then return -2 end
  if not kept then names[#names + 1] = field; names[#names + 1] = name end
end
if #names > 0 then redis.call('HSET', KEYS[1], unpack(names)) end
for i = 5, #ARGV, 3 do
  local value = prov .. ':' .. ARGV[i + 2]
  if ARGV[i + 1] == 'crashed' then
    if redis.call('HSETNX', KEYS[2], ARGV[i], value) == 1 then redis.call('SADD', KEYS[3], ARGV[i]) end
  else
    redis.call('HSET', KEYS[2], ARGV[i], value)
    if ARGV[i + 1] == 'error' then redis.call('SADD', KEYS[3], ARGV[i]) else redis.call('SREM', KEYS[3], ARGV[i]) end
  end
end
local processed = redis.call('HLEN', KEYS[2])
""" + _FINISH

# Count a batch whose records went to the job's Parquet sink, if the job still exists: its count replaces
# the batch's earlier one (a redelivery rewrote the file), and its entry in the batch list becomes ``null``
# (its paths are in the file now), so that a sink job's Redis does not grow with its images. KEYS: _job_keys.
# ARGV: now, job id, batch number, records, then (image id, "ok"|"error") per record. Returns the number of
# records, -1 for no job.
_SUNK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local before = tonumber(redis.call('HGET', KEYS[9], ARGV[3]) or '0')
redis.call('HSET', KEYS[9], ARGV[3], ARGV[4])
redis.call('LSET', KEYS[5], ARGV[3], 'null')
local processed = redis.call('HINCRBY', KEYS[1], 'sunk', tonumber(ARGV[4]) - before)
for i = 5, #ARGV, 2 do
  if ARGV[i + 1] == 'error' then redis.call('SADD', KEYS[3], ARGV[i]) else redis.call('SREM', KEYS[3], ARGV[i]) end
end
""" + _FINISH

# Set a field of the job's hash unless it is set, if the job exists. KEYS: job. ARGV: field, value.
_SET_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
"""

# Take back a job's cancellation (`imgq requeue --resume`): unmark it, make it active again and stop its
# retention, which the cancellation started. KEYS: as _RECORD. ARGV: the job id. Returns -1 for no job, 0 when
# it was not cancelled or is done (every image has its record).
_RESUME = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
local processed = redis.call('HLEN', KEYS[2]) + tonumber(redis.call('HGET', KEYS[1], 'sunk') or '0')
if total and processed >= total then return 0 end
if redis.call('HDEL', KEYS[1], 'cancelled_at') == 0 then return 0 end
redis.call('SADD', KEYS[4], ARGV[1])
for i = 1, #KEYS do if i ~= 4 then redis.call('PERSIST', KEYS[i]) end end
return 1
"""

# Cancel a job that is not done: mark it, drop it from the active set, start its retention. KEYS: as _RECORD.
_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
if total and redis.call('HLEN', KEYS[2]) >= total then return 0 end
redis.call('HSETNX', KEYS[1], 'cancelled_at', ARGV[1])
redis.call('SREM', KEYS[4], ARGV[2])
local retention = tonumber(redis.call('HGET', KEYS[1], 'retention') or '0')
if retention > 0 then
  for i = 1, #KEYS do if i ~= 4 then redis.call('EXPIRE', KEYS[i], retention) end end
end
return 1
"""

# Drop an id from the active set if its job's hash is gone. KEYS: job, active. ARGV: job id.
_DROP_IF_GONE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
return redis.call('SREM', KEYS[2], ARGV[1])
"""

# Give a job committed with hold_retention its retention: kept in the hash for _FINISH and _CANCEL, and begun
# now when the job is finished already. KEYS: _job_keys. Returns 1 when the job was held.
_RELEASE_RETENTION = """
local held = redis.call('HGET', KEYS[1], 'held_retention')
if not held then return 0 end
redis.call('HDEL', KEYS[1], 'held_retention')
redis.call('HSET', KEYS[1], 'retention', held)
local retention = tonumber(held) or 0
local done = redis.call('HEXISTS', KEYS[1], 'finished_at') == 1
if retention > 0 and (done or redis.call('HEXISTS', KEYS[1], 'cancelled_at') == 1) then
  for i = 1, #KEYS do if i ~= 4 then redis.call('EXPIRE', KEYS[i], retention) end end
end
return 1
"""


class ResultStore:
    """Jobs and records of one namespace. ``client`` answers str (``decode_responses``); ``raw`` (made from
    its connection settings when not given) answers bytes, for the packed values."""

    def __init__(self, client: redis.Redis, namespace: str, raw: redis.Redis | None = None, sink_dir: str = "",
                 broker: redis.Redis | None = None):
        self.redis = client
        # The broker's Redis, where the queue is: another server than ``client`` when IMGQ_RESULTS_URL is set.
        self.broker = broker or client
        self.sink_dir = sink_dir  # where the Parquet sinks of `--sink` jobs are, as this machine sees them
        self.raw = raw or redis.Redis(connection_pool=redis.ConnectionPool(
            **{**client.connection_pool.connection_kwargs, "decode_responses": False},
            connection_class=client.connection_pool.connection_class))
        self.keys = Keys(namespace)
        self._record = self.redis.register_script(_RECORD)
        self._sunk = self.redis.register_script(_SUNK)
        self._set_once = self.redis.register_script(_SET_ONCE)
        self._cancel = self.redis.register_script(_CANCEL)
        self._drop_if_gone = self.redis.register_script(_DROP_IF_GONE)
        self._release_retention = self.redis.register_script(_RELEASE_RETENTION)
        self._resume = self.redis.register_script(_RESUME)

    @classmethod
    def from_settings(cls, settings: Settings) -> ResultStore:
        client = redis.Redis.from_url(settings.effective_results_url, decode_responses=True,
                                      socket_connect_timeout=5, health_check_interval=30)
        broker = None
        if settings.effective_results_url != settings.broker_url:
            broker = redis.Redis.from_url(settings.broker_url, decode_responses=True, socket_connect_timeout=5,
                                          health_check_interval=30)
        return cls(client, settings.namespace, sink_dir=settings.effective_sink_dir, broker=broker)

    def ping(self) -> None:
        """Raises redis.ConnectionError when the store cannot be reached."""
        self.redis.ping()

    def _job_keys(self, job: str) -> list[str]:
        """The keys of one job, in the order the scripts take them (the active set fourth)."""
        k = self.keys
        return [k.job(job), k.results(job), k.failed(job), k.active, k.batches(job), k.attempts(job),
                k.inflight(job), k.suspects(job), k.sunk(job)]

    # -- submission ------------------------------------------------------------------------------------

    def stage_batches(self, job: str, messages: list[dict]) -> None:
        """Append batch messages of a job being submitted (not yet visible)."""
        key = self.keys.batches(job)
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, *(json.dumps(m) for m in messages))
        pipe.expire(key, STAGING_TTL)
        pipe.execute()

    def discard_staged(self, job: str) -> None:
        """Drop the staged batches of a submission that will not be committed (else they wait a day)."""
        self.redis.delete(self.keys.batches(job))

    def commit_job(self, job: str, name: str, total: int, batches: int, params: dict, retention: int = 0,
                   publishing: bool = False, hold_retention: bool = False, skipped: dict | None = None) -> None:
        """Make a staged job visible, atomically. ``retention``: seconds its keys are kept once it is
        finished (0: until deleted). ``publishing``: its batches are about to be published, and the job says
        so (``publishing``) until ``end_publishing``: a submit that fails part-way leaves the mark, and the
        reconciler then queues the job again without trusting its published count (worker/reconcile.py).
        ``hold_retention``: the retention starts only at ``release_retention`` (a schedule's job, which its
        next tick must read, however long after it finished: imgq/schedules/tick.py). ``skipped``: the walk's
        ``skipped_files`` and ``skipped_kinds`` fields (imgq.storage.walk.Skipped.to_fields), absent when it skipped
        nothing."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.job(job), mapping={
            "id": job, "name": name, "created": now, "total": total, "batches": batches,
            "params": json.dumps({**params, **({"retention": retention} if retention else {})}),
            "retention": 0 if hold_retention else retention, **({"sink": 1} if params.get("sink") else {}),
            **({"publishing": now} if publishing else {}), **({"held_retention": retention} if hold_retention else {}),
            **(skipped or {}),
        })
        pipe.zadd(self.keys.jobs, {job: now})
        pipe.sadd(self.keys.active, job)
        if params.get("sink"):
            pipe.sadd(self.keys.sinks, job)
        pipe.persist(self.keys.batches(job))
        pipe.execute()

    def release_retention(self, job: str) -> bool:
        """Let a job committed with ``hold_retention`` expire: at once, its retention from now, when it is
        finished; else when it finishes. False when it was not held (or is gone)."""
        return bool(self._release_retention(keys=self._job_keys(job), args=[]))

    def end_publishing(self, job: str) -> None:
        """Every batch of the job was published (see ``commit_job``)."""
        self.redis.hdel(self.keys.job(job), "publishing")

    def batch(self, job: str, number: int) -> dict | None:
        """One batch message of the job, by number; None when there is no such batch (or job), or when it is a
        sink job's batch already written to its file."""
        raw = self.redis.lindex(self.keys.batches(job), number) if number >= 0 else None
        return None if raw is None else json.loads(raw)

    def iter_batches(self, job: str) -> Iterator[dict]:
        """The job's batch messages in order (of a sink job: those not yet in its files)."""
        key = self.keys.batches(job)
        start = 0
        while chunk := self.redis.lrange(key, start, start + READ_CHUNK - 1):
            yield from (message for message in map(json.loads, chunk) if message is not None)
            start += len(chunk)

    def unfinished_batches(self, job: str) -> Iterator[dict]:
        """The job's batch messages with at least one image still lacking a record."""
        sunk = self.sunk_batches(job)
        if sunk or self.redis.hexists(self.keys.job(job), "sink"):
            yield from (m for m in self.iter_batches(job) if sunk.get(m["batch"], 0) < len(m["images"]))
            return
        key = self.keys.results(job)
        batches = self.iter_batches(job)
        while chunk := list(islice(batches, READ_CHUNK)):
            pipe = self.raw.pipeline(transaction=False)
            for message in chunk:
                pipe.hmget(key, [str(image) for image, _ in message["images"]])
            yield from (m for m, found in zip(chunk, pipe.execute(), strict=True) if None in found)

    # -- worker side -----------------------------------------------------------------------------------

    def mark_started(self, job: str) -> None:
        """The job's first batch has started (once; nothing when the job is gone)."""
        self._set_once(keys=[self.keys.job(job)], args=["started_at", time.time()])

    def open_for_work(self, job: str) -> bool:
        """False when the job's batches need no work: it is gone (deleted, expired), cancelled or done."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.keys.job(job), ["total", "cancelled_at", "sunk"])
        pipe.hlen(self.keys.results(job))
        (total, cancelled, sunk), processed = pipe.execute()
        return total is not None and cancelled is None and processed + int(sunk or 0) < int(total)

    def is_cancelled(self, job: str) -> bool:
        return self.redis.hexists(self.keys.job(job), "cancelled_at")

    def record_results(self, job: str, records: Iterable[ResultRecord]) -> int:
        """Store one record per image (overwriting any earlier one, except that a ``worker_crashed`` record
        never replaces one); returns how many images have records, or -1 when the job is gone (nothing is
        written then)."""
        by_provenance: dict[str, list[ResultRecord]] = {}
        for record in records:
            by_provenance.setdefault(packing.provenance(record), []).append(record)
        processed = -1
        for provenance, group in by_provenance.items():
            processed = self._record_group(job, provenance, group)
            if processed < 0:
                break
        return processed

    def _record_group(self, job: str, provenance: str, records: list[ResultRecord]) -> int:
        names: dict[int, str] = {}
        for record in records:
            names.update(packing.classes(record))
        processed = self._record(keys=self._job_keys(job), args=[time.time(), job, provenance, json.dumps(names),
                                                                 *_record_args(records, packing.pack)])
        if processed == -2:  # a class index named differently before (labels.txt changed): keep the names
            processed = self._record(keys=self._job_keys(job), args=[time.time(), job, provenance, "{}",
                                                                     *_record_args(records, packing.as_json)])
        return processed

    def record_sunk(self, job: str, batch: int, records: list[ResultRecord]) -> int:
        """Count the records of ``batch`` that were written to the job's Parquet sink (imgq/results/sink.py), replacing
        the batch's earlier count; returns how many images have records, or -1 when the job is gone."""
        pairs = [value for record in records for value in (str(record.image), record.status)]
        return self._sunk(keys=self._job_keys(job), args=[time.time(), job, batch, len(records), *pairs])

    def sunk_count(self, job: str, batch: int) -> int:
        """Records ``batch`` wrote to the job's sink (0: none yet)."""
        return int(self.redis.hget(self.keys.sunk(job), batch) or 0)

    def sunk_batches(self, job: str) -> dict[int, int]:
        """Batch number -> records it wrote to the job's sink."""
        return {int(batch): int(n) for batch, n in self.redis.hgetall(self.keys.sunk(job)).items()}

    def missing(self, job: str, images: list[int]) -> list[int]:
        """Those of ``images`` that have no record yet."""
        found = self.raw.hmget(self.keys.results(job), [str(i) for i in images]) if images else []
        return [image for image, raw in zip(images, found, strict=True) if raw is None]

    def active_jobs(self) -> set[str]:
        """Jobs neither done nor cancelled."""
        return set(self.redis.smembers(self.keys.active))

    def drop_if_gone(self, job: str) -> bool:
        """Take ``job`` out of the active set when its hash is gone (evicted, or deleted by an imgq that left
        the id behind): such an id would be read again at every reconcile. True when it was dropped."""
        return bool(self._drop_if_gone(keys=[self.keys.job(job), self.keys.active], args=[job]))

    # -- reading ---------------------------------------------------------------------------------------

    def status(self, job: str) -> JobStatus:
        """Raises JobNotFound."""
        return self._status_and_record(job)[0]

    def _status_and_record(self, job: str) -> tuple[JobStatus, dict]:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(self.keys.job(job))
        pipe.hlen(self.keys.results(job))
        pipe.scard(self.keys.failed(job))
        pipe.pttl(self.keys.job(job))
        record, processed, failed, ttl = pipe.execute()
        processed += int(record.get("sunk", 0))  # the records of a job with a sink are in its Parquet files
        status = parse_job(record, processed, failed, ttl) if record else None
        if status is None:
            raise JobNotFound(job)
        return status, record

    def list_jobs(self, limit: int = 20) -> list[JobStatus]:
        """The most recent jobs, newest first. Jobs whose retention has passed are forgotten here."""
        statuses: list[JobStatus] = []
        gone = []
        for start in range(0, self.redis.zcard(self.keys.jobs), limit):
            for job in self.redis.zrevrange(self.keys.jobs, start, start + limit - 1):
                try:
                    statuses.append(self.status(job))
                except JobNotFound:  # expired, or deleted between the two reads
                    gone.append(job)
            if len(statuses) >= limit:
                break
        self._forget([job for job in gone if not self.redis.exists(self.keys.job(job))])
        return statuses[:limit]

    def forget_expired(self, chunk: int = READ_CHUNK) -> int:
        """Drop from the job list every id whose job has expired (its retention passed), reading the list
        ``chunk`` ids at a time (the whole list, not its oldest ids only: jobs kept until deleted may fill
        those); returns how many. And remove the Parquet files of sink jobs that are gone (expired, deleted),
        from this process's sink folder. The reconciler calls it every period, so that neither the list nor
        the sink outgrows the jobs kept."""
        from imgq.results.sink_cleanup import remove_gone_sinks

        remove_gone_sinks(self.redis, self.keys, self.sink_dir)
        forgotten = start = 0
        while jobs := self.redis.zrange(self.keys.jobs, start, start + chunk - 1):
            pipe = self.redis.pipeline(transaction=False)
            for job in jobs:
                pipe.exists(self.keys.job(job))
            gone = [job for job, exists in zip(jobs, pipe.execute(), strict=True) if not exists]
            self._forget(gone)
            forgotten += len(gone)
            start += len(jobs) - len(gone)  # the ids left shifted down by those removed
        return forgotten

    def _forget(self, expired: list[str]) -> None:
        """Drop expired jobs from the job list, remembering their ids (the most recent EXPIRED_KEPT)."""
        if not expired:
            return
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.keys.jobs, *expired)
        pipe.zadd(self.keys.expired, dict.fromkeys(expired, time.time()))
        pipe.zremrangebyrank(self.keys.expired, 0, -EXPIRED_KEPT - 1)
        pipe.execute()

    def iter_records(self, job: str) -> Iterator[ResultRecord]:
        """Every stored record of the job, in submission order. Raises JobNotFound."""
        _, record = self._status_and_record(job)
        if record.get("sink"):  # the records are in the job's Parquet files, one per batch
            from imgq.results import sink

            yield from sink.read_counted(self.sink_dir, job, self.sunk_batches(job))
            return
        provenances, names = _provenances(record), _class_names(record)
        key = self.keys.results(job)
        batches = self.iter_batches(job)
        while chunk := list(islice(batches, READ_CHUNK // 32 + 1)):
            images = [(int(image), path) for message in chunk for image, path in message["images"]]
            values = self.raw.hmget(key, [str(image) for image, _ in images])
            for (image, path), value in zip(images, values, strict=True):
                if value is not None:
                    yield self._unpacked(value, job, image, path, provenances, names)

    def _unpacked(self, value: bytes, job: str, image: int, path: str, provenances: dict[str, str],
                  names: dict[str, dict[int, str]]) -> ResultRecord:
        """The record of a stored value. ``provenances`` (number -> JSON) and ``names`` (number -> class
        names), as read from the job's hash, are read again when the record names one written since (a worker
        that joined the job meanwhile, a class first seen in a later batch)."""
        number, _, packed = value.partition(b":")
        for attempt in range(2):
            try:
                return packing.unpack(packed, job=job, image=image, path=path,
                                      provenance_json=provenances[number.decode()], names=names.get(number.decode()))
            except KeyError:
                if attempt:
                    raise
                fresh = self.redis.hgetall(self.keys.job(job))
                provenances.update(_provenances(fresh))
                names.update(_class_names(fresh))
        raise AssertionError("unreachable")

    def iter_results(self, job: str) -> Iterator[dict]:
        """``iter_records`` in their dict form: what `imgq results` prints. Raises JobNotFound."""
        return (record.to_dict() for record in self.iter_records(job))

    def record(self, job: str, image: int) -> ResultRecord | None:
        """The record of one image; None while it has none. Raises JobNotFound."""
        _, record = self._status_and_record(job)
        if record.get("sink"):
            return next((r for r in self.iter_records(job) if r.image == image), None)
        value = self.raw.hget(self.keys.results(job), str(image))
        first = self.batch(job, 0)  # every batch but the last is as long as the first
        message = self.batch(job, image // len(first["images"])) if first and image >= 0 else None
        paths = {int(i): path for i, path in message["images"]} if message else {}
        if value is None or image not in paths:
            return None
        return self._unpacked(value, job, image, paths[image], _provenances(record), _class_names(record))

    # -- workers and the queue -------------------------------------------------------------------------

    def workers(self) -> list[Heartbeat]:
        """Heartbeats of the live workers: those ready to take batches (each refreshed every few seconds,
        expiring when it stops). Workers still starting, or failing, are in ``heartbeats``."""
        return [w for w in self.heartbeats() if w.ready]

    def heartbeats(self) -> list[Heartbeat]:
        """Every worker's heartbeat, whatever its state (imgq.contract.STARTING, READY, FAILED)."""
        keys = list(self.redis.scan_iter(match=self.keys.worker_pattern, count=1000))
        return [Heartbeat.from_dict(json.loads(v)) for v in self.redis.mget(keys) if v] if keys else []

    def heartbeat(self, worker_id: str) -> Heartbeat | None:
        """The last heartbeat of one worker; None once it has expired (the worker stopped or died)."""
        raw = self.redis.get(self.keys.worker(worker_id))
        return None if raw is None else Heartbeat.from_dict(json.loads(raw))

    def send_heartbeat(self, worker_id: str, heartbeat: Heartbeat, ttl: int) -> None:
        """Say that ``worker_id`` is alive for ``ttl`` seconds more."""
        self.redis.set(self.keys.worker(worker_id), json.dumps(heartbeat.to_dict()), ex=ttl)

    def forget_heartbeat(self, worker_id: str) -> None:
        """Stop saying ``worker_id`` is alive, at once (a worker giving up), instead of after three beats."""
        self.redis.delete(self.keys.worker(worker_id))

    def queue_depth(self, model: str = MODEL_NAME, weights: str = "", precision: str = "") -> int:
        """Batch messages waiting in the queue of ``model``'s workers (kombu's list; of those with ``weights``, a
        weights key, and serving ``precision``, when given), read from the broker (which is not the results store
        when IMGQ_RESULTS_URL is set: the store's Redis has no queue, and would read 0)."""
        return self.broker.llen(self.keys.model_queue(model_queue(self.keys.ns, model, weights, precision)))

    def queue_depths(self, models: Iterable[str], asked: Iterable[tuple[str, str, str]] = ()) -> dict[str, int]:
        """Model name -> batch messages waiting in its queue (on the broker), for each of ``models``, with those
        waiting in the queues of the ``(model, weights key, precision)`` of ``asked`` added to their model's."""
        names = sorted(set(models) | {model for model, _, _ in asked})
        queues = [(model, "", "") for model in names] + sorted({q for q in asked if q[1] or q[2]})
        pipe = self.broker.pipeline(transaction=False)
        for model, key, precision in queues:
            pipe.llen(self.keys.model_queue(model_queue(self.keys.ns, model, key, precision)))
        depths = dict.fromkeys(names, 0)
        for (model, _, _), depth in zip(queues, pipe.execute(), strict=True):
            depths[model] += depth
        return depths

    def serving(self, model: str, weights: str = "", precision: str = "") -> list[Heartbeat]:
        """The live workers that serve ``model`` (by name), with ``weights`` (a weights key; "": any), at
        ``precision`` (one of imgq.contract.PRECISIONS; "": any)."""
        return [w for w in self.workers() if w.serves(model, weights, precision)]

    def take_reconcile_turn(self, worker_id: str, seconds: int) -> bool:
        """True for the one worker allowed to reconcile for the next ``seconds``."""
        return bool(self.redis.set(self.keys.reconcile_lock, worker_id, nx=True, ex=seconds))

    # -- lifecycle -------------------------------------------------------------------------------------

    def cancel(self, job: str) -> JobStatus:
        """Stop the job's remaining batches from running; records already written stay, and the job's
        retention starts. A finished job stays as it is. Raises JobNotFound."""
        if self._cancel(keys=self._job_keys(job), args=[time.time(), job]) < 0:
            raise JobNotFound(job)
        return self.status(job)

    def resume(self, job: str) -> bool:
        """Take back the job's cancellation: its batches are worked on again (queue them: imgq.jobs.queue) and its
        retention waits until it finishes. False when it was not cancelled. Raises JobNotFound."""
        resumed = self._resume(keys=self._job_keys(job), args=[job])
        if resumed < 0:
            raise JobNotFound(job)
        return bool(resumed)

    def delete(self, job: str) -> SinkLeft:
        """Forget a job: every key of it, at once, and its Parquet sink's files. Batches still queued or in a
        worker's hands find no job and write nothing.

        Returns what is left of a sink job's files (``SinkLeft``): batch files not in this machine's sink
        folder, or files that could not be removed. The workers' reconciler removes those (``forget_expired``),
        as it does a file a worker writes while the job is deleted. Raises JobNotFound, or SinkNotRemovable
        when the job's sink folder is read-only here (the job is then kept, whole)."""
        _, record = self._status_and_record(job)
        left = SinkLeft()
        if record.get("sink"):
            from imgq.results import sink

            folder = sink.job_folder(self.sink_dir, job)
            if os.path.isdir(folder) and not os.access(folder, os.W_OK | os.X_OK):
                raise sink.SinkNotRemovable(f"Cannot remove the Parquet files of job {job} in {folder} (a read-only "
                                            "folder): the job is kept; delete it again once they can be removed.")
            present = set(sink.batch_numbers(self.sink_dir, job))
            elsewhere = sum(1 for batch, n in self.sunk_batches(job).items() if n > 0 and batch not in present)
            left = SinkLeft(folder, elsewhere)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(*(key for key in self._job_keys(job) if key != self.keys.active))
        pipe.zrem(self.keys.jobs, job)
        pipe.srem(self.keys.active, job)
        pipe.execute()
        if left.folder:
            try:
                sink.remove_job(self.sink_dir, job)
            except OSError as exc:
                left = SinkLeft(left.folder, left.elsewhere, exc.strerror or str(exc))
        return left

def _record_args(records: list[ResultRecord], pack) -> list:
    """(image id, "ok"|"error"|"crashed", packed record) per record, for _RECORD."""
    args: list = []
    for record in records:
        crashed = record.error is not None and record.error.code == "worker_crashed"
        args += [str(record.image), "crashed" if crashed else record.status, pack(record)]
    return args


def _class_names(job_record: dict[str, str]) -> dict[str, dict[int, str]]:
    """Provenance number -> {class index: name} of the classes its packed records leave out (a user's model's),
    from the ``cls:<provenance>:<index>`` fields of a job's hash."""
    names: dict[str, dict[int, str]] = {}
    for key, value in job_record.items():
        if key.startswith("cls:"):
            _, number, index = key.split(":")
            names.setdefault(number, {})[int(index)] = value
    return names


def _provenances(job_record: dict[str, str]) -> dict[str, str]:
    """Provenance number -> its JSON (imgq/results/packing.py), from the fields of a job's hash."""
    return {key.removeprefix("provn:"): value for key, value in job_record.items() if key.startswith("provn:")}


def delete_namespace(url: str, namespace: str) -> int:
    """Delete every key ``<namespace>:*`` at ``url`` (found with SCAN, never FLUSHDB: the server may be
    shared with other namespaces and other programs); returns how many. For tests, benchmarks, clean-ups."""
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start:start + 1000])
    return len(keys)
