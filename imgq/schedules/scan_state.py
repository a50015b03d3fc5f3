"""Incremental scan state of a schedule: which files are classified as they are now, which keep failing.

Per schedule and model name (a file classified by one model is new for another: a schedule whose model
changes scans everything again), three Redis hashes next to the results (keys built by ``Keys.scan``), each keyed by
the digest of a file's absolute path (``imgq.contract.path_digest``) and holding its version (8 bytes, from its
byte source: a local file's size and modification time in ns; an s3:// object's ETag, last-modified time and
size, read from the LIST pages of the walk, ByteSource.list_versions):

- ``known``: files whose last submitted version got an ``ok`` record. While the file's size and mtime still
  match, it is not submitted again; when either changes, it is (``changed``).
- ``errors``: files whose last version got an ``error`` record, with the number of failures of that version.
  It is submitted again on the following ticks until it has failed ``1 + max_retries`` times, then left alone
  until it changes (a file still being copied reads as ``corrupt`` and deserves another look; a text file
  named .jpg does not deserve one every tick forever).
- ``pending``: the files of the schedule's job in flight, with their stat at submission. Once that job has
  finished, ``settle`` moves each file to ``known`` or ``errors`` from its record, with the stat it had when
  it was submitted (a file changed while its job ran is then seen as changed). A file without a record (a
  cancelled job) leaves no trace and is submitted again.

Why digests: a path costs its length in Redis (60 to 120 bytes is common), a 12-byte digest one 16-byte
allocation whatever the path; at 96 bits, two paths colliding among a billion is a 1-in-10^11 event. Change
detection needs only equality, so the stat is an 8-byte digest too. Measured with ``memory_per_file`` over
20,000 files: 55 bytes per known file on Valkey 9.1, 76 on Redis 7.0, at most 80 (``tests/test_scan.py``).

The name only, not the model's version (its file digest, its imgq-model.toml), on purpose: the version is
known to the worker that loaded the model, while a tick also runs in `imgq schedule run`, where the folder may
not be. A new version under the same name therefore does not make a schedule classify its files again (give it
a new name, or remove and re-add the schedule: docs/models.md). That is no stale answer: a schedule's jobs do
not use the content-hash index, so every file it submits is classified by the version serving now.

Files deleted from disk keep their entries (a folder that is briefly unmounted must not make the next tick
classify everything again); ``forget`` drops a schedule's state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import redis

from imgq.contract import MODEL_NAME, ResultRecord, path_digest
from imgq.keys import Keys
from imgq.settings import Settings
from imgq.storage.local import STAT_DIGEST_BYTES
from imgq.storage.locate import source_for

CHUNK = 1000  # files per Redis round trip
PARTS = ("known", "errors", "pending")


def file_version(path: str) -> bytes | None:
    """The version of the file as it is now (its byte source's fingerprint); None when it has vanished or
    cannot be read."""
    return source_for(path).version(path)


def _failure(version: bytes, failures: int) -> bytes:
    return version + bytes([min(failures, 255)])


def _failures_of(entry: bytes | None, version: bytes) -> int:
    """How often ``version`` has failed, from an ``errors`` entry (0 when the entry is of another version)."""
    return entry[-1] if entry is not None and entry[:STAT_DIGEST_BYTES] == version else 0


@dataclass
class ScanTally:
    """What one walk found, by reason. ``new + changed + retried`` files were submitted."""

    new: int = 0
    changed: int = 0
    retried: int = 0
    unchanged: int = 0
    given_up: int = 0  # failed 1 + max_retries times and unchanged since: not submitted
    vanished: int = 0  # found by the walk, gone before its stat

    @property
    def submitted(self) -> int:
        return self.new + self.changed + self.retried


@dataclass
class Settlement:
    """What the records of a finished job taught: files now known, failed (and of those, given up), and files
    of the job without a record (a cancelled job), which will be submitted again."""

    ok: int = 0
    failed: int = 0
    given_up: int = 0
    unrecorded: int = 0


class ScanState:
    """The scan state of one schedule. ``client`` must return bytes (``decode_responses=False``)."""

    def __init__(self, client: redis.Redis, keys: Keys, name: str, model: str = MODEL_NAME):
        self.redis = client
        self.known, self.errors, self.pending = (keys.scan(name, part, model) for part in PARTS)

    @classmethod
    def from_settings(cls, settings: Settings, name: str, model: str = MODEL_NAME) -> ScanState:
        """The state of schedule ``name`` for ``model`` (its name): what that model has classified."""
        client = redis.Redis.from_url(settings.effective_results_url, socket_connect_timeout=5,
                                      health_check_interval=30)
        return cls(client, Keys(settings.namespace), name, model)

    def select(self, paths: Iterable[str], max_retries: int, found: ScanTally,
               keepalive: Callable[[], object] | None = None) -> Iterator[str]:
        """The paths to submit: new, changed, or failed at most ``max_retries`` times, each path's version asked of
        its byte source (``select_versioned`` for versions a listing gave)."""
        versioned = ((path, file_version(path)) for path in paths)
        return self.select_versioned(versioned, max_retries, found, keepalive)

    def select_versioned(self, listed: Iterable[tuple[str, bytes | None]], max_retries: int, found: ScanTally,
                         keepalive: Callable[[], object] | None = None) -> Iterator[str]:
        """The paths to submit among ``listed`` (each path with its version as it was listed, None when it has
        vanished): new, changed, or failed at most ``max_retries`` times. Each is written to ``pending`` with its
        version before it is yielded; ``found`` counts the reasons as the walk goes. ``keepalive`` runs once per
        chunk of files (to renew a lock during a long walk)."""
        listed = iter(listed)
        while chunk := list(islice(listed, CHUNK)):
            yield from self._select_chunk(chunk, max_retries, found)
            if keepalive is not None:
                keepalive()

    def _select_chunk(self, chunk: list[tuple[str, bytes | None]], max_retries: int, found: ScanTally) -> list[str]:
        fields = [path_digest(path) for path, _ in chunk]
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.known, fields)
        pipe.hmget(self.errors, fields)
        known, errors = pipe.execute()
        chosen, pending = [], {}
        for (path, version), field, was_ok, failed in zip(chunk, fields, known, errors, strict=True):
            reason = _reason(version, was_ok, failed, max_retries)
            setattr(found, reason, getattr(found, reason) + 1)
            if reason in ("new", "changed", "retried"):
                chosen.append(path)
                pending[field] = version
        if pending:
            self.redis.hset(self.pending, mapping=pending)
        return chosen

    def settle(self, records: Iterable[ResultRecord], max_retries: int) -> Settlement:
        """Move the files of the finished job in ``pending`` to ``known`` or ``errors`` from their records,
        then clear ``pending``."""
        settled = Settlement(unrecorded=self.redis.hlen(self.pending))
        records = iter(records)
        while chunk := list(islice(records, CHUNK)):
            self._settle_chunk(chunk, max_retries, settled)
        settled.unrecorded -= settled.ok + settled.failed
        self.clear_pending()
        return settled

    def _settle_chunk(self, records: list[ResultRecord], max_retries: int, settled: Settlement) -> None:
        fields = [path_digest(r.path) for r in records]
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.pending, fields)
        pipe.hmget(self.errors, fields)
        versions, errors = pipe.execute()
        pipe = self.redis.pipeline(transaction=True)
        for record, field, version, failed in zip(records, fields, versions, errors, strict=True):
            if version is None:  # not submitted by this schedule's scan (cannot happen unless edited by hand)
                continue
            if record.ok:
                settled.ok += 1
                pipe.hset(self.known, field, version)
                pipe.hdel(self.errors, field)
            else:
                failures = _failures_of(failed, version) + 1
                settled.failed += 1
                settled.given_up += failures > max_retries
                pipe.hset(self.errors, field, _failure(version, failures))
                pipe.hdel(self.known, field)  # the current version has no result
        pipe.execute()

    def clear_pending(self) -> None:
        """Forget the files of a job in flight (settled, or a submission that failed half-way)."""
        self.redis.delete(self.pending)

    def counts(self) -> dict[str, int]:
        """Files in each part of the state."""
        pipe = self.redis.pipeline(transaction=False)
        for key in (self.known, self.errors, self.pending):
            pipe.hlen(key)
        return dict(zip(PARTS, pipe.execute(), strict=True))

    def memory_per_file(self) -> float | None:
        """Bytes of Redis memory (``MEMORY USAGE``, every element counted) per file of ``known``; None when
        empty."""
        entries = self.redis.hlen(self.known)
        if not entries:
            return None
        return self.redis.memory_usage(self.known, samples=0) / entries

    def forget(self) -> None:
        """Drop the whole state: the next scan submits every file again."""
        self.redis.delete(self.known, self.errors, self.pending)


def _reason(version: bytes | None, was_ok: bytes | None, failed: bytes | None, max_retries: int) -> str:
    """Why a file is (or is not) submitted, as a field name of ScanTally."""
    if version is None:
        return "vanished"
    if was_ok == version:
        return "unchanged"
    failures = _failures_of(failed, version)
    if failures > max_retries:
        return "given_up"
    if failures:
        return "retried"
    return "changed" if was_ok is not None or failed is not None else "new"
