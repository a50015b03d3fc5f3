"""A job as `imgq status` shows it: its record in the store with the counts derived from its results."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from imgq.contract import MODEL_NAME

EXPIRY_WARNING = 0.1
# `imgq results` warns when less than this share of a finished job's retention is left (a day of 7, say).

MIN_RATE_SECONDS = 2.0
# A rate measured over less than this is noise (a 1-image job done in a millisecond is not "1310.7/s"): unknown.


@dataclass(frozen=True)
class JobStatus:
    """A job record with its derived counts."""

    id: str
    name: str
    created: float
    total: int
    processed: int
    failed: int
    params: dict = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    cancelled_at: float | None = None
    last_record_at: float | None = None
    expires_at: float | None = None
    # When the store forgets the finished job (its retention); None: it is kept until deleted.
    skipped_files: int = 0
    skipped_kinds: str = ""
    # Files the walk found in folders and did not queue, not being images, and their kinds ("1 .MOV, 1 .txt").
    model_ids: tuple[str, ...] = ()
    # The ids of the models that wrote its records so far (imgq.models.spec.ModelSpec.id: a folder model's with its
    # file's digest), from the provenances the store keeps: known once a worker has answered.
    precisions: tuple[str, ...] = ()
    # The precisions its records were made in so far, from the same provenances: a job that asked for int8 has
    # fp32 records too when an INT8 worker classified its first images while it calibrated (docs/runtime.md).

    @property
    def other_precisions(self) -> tuple[str, ...]:
        """The precisions of its records that are not the one it asked for (none when it asked for none)."""
        return tuple(p for p in self.precisions if self.precision and p != self.precision)

    @property
    def ok(self) -> int:
        return self.processed - self.failed

    @property
    def state(self) -> str:
        if self.processed >= self.total:
            return "done"
        if self.cancelled_at is not None:
            return "cancelled"
        return "running" if self.started_at is not None else "queued"

    @property
    def finished(self) -> bool:
        return self.state in ("done", "cancelled")

    @property
    def elapsed(self) -> float | None:
        """Seconds from the first batch started to the last record (or now, while running)."""
        if self.started_at is None:
            return None
        # A done job's last record time stands in for finished_at, written just after the records.
        end = self.finished_at or (self.last_record_at if self.state == "done" else None) or self.cancelled_at
        end = end or time.time()
        return max(end - self.started_at, 1e-9)

    @property
    def rate(self) -> float | None:
        """Images per second since the first batch started; None before MIN_RATE_SECONDS have passed (or
        a job finished sooner)."""
        elapsed = self.elapsed
        if elapsed is None or elapsed < MIN_RATE_SECONDS or self.processed == 0:
            return None
        return self.processed / elapsed

    @property
    def eta(self) -> float | None:
        """Seconds until done at the current rate; None when unknown or finished."""
        rate = self.rate
        if self.finished or not rate:
            return None
        return (self.total - self.processed) / rate

    @property
    def model(self) -> str:
        """The name of the model the job asked for (its batches wait in that model's queue)."""
        return str(self.params.get("model", MODEL_NAME))

    @property
    def weights(self) -> str:
        """The key of the weights the job asked for (imgq/models/weights.py); "": any weights of its model."""
        return str(self.params.get("weights", ""))

    @property
    def precision(self) -> str:
        """The precision the job asked its passes to run in (imgq.contract.PRECISIONS); "": any."""
        return str(self.params.get("precision", ""))

    @property
    def retention(self) -> int:
        """Seconds a finished job is kept (0: until deleted)."""
        return int(self.params.get("retention", 0))

    def expiring_soon(self, now: float | None = None) -> bool:
        """True when the store will forget this finished job within EXPIRY_WARNING of its retention."""
        if self.expires_at is None:
            return False
        return self.expires_at - (time.time() if now is None else now) < EXPIRY_WARNING * self.retention


def parse_job(record: dict, processed: int, failed: int, ttl_ms: int) -> JobStatus | None:
    """The status of a job hash as the store reads it, or None when it is not a whole job record (a
    half-written or foreign key must read as "no such job", never crash a reader)."""
    try:
        return JobStatus(
            id=record["id"], name=record.get("name", ""), created=float(record["created"]),
            total=int(record["total"]), processed=processed, failed=failed,
            params=json.loads(record.get("params", "{}")),
            started_at=_optional_float(record.get("started_at")),
            finished_at=_optional_float(record.get("finished_at")),
            cancelled_at=_optional_float(record.get("cancelled_at")),
            last_record_at=_optional_float(record.get("last_record_at")),
            expires_at=time.time() + ttl_ms / 1000 if ttl_ms > 0 else None,
            skipped_files=int(record.get("skipped_files", 0)), skipped_kinds=record.get("skipped_kinds", ""),
            model_ids=tuple(sorted({str(json.loads(value)[0]) for key, value in record.items()
                                    if key.startswith("provn:")})),
            precisions=tuple(sorted({str(json.loads(value)[2]) for key, value in record.items()
                                     if key.startswith("provn:")})),
        )
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _optional_float(value: str | None) -> float | None:
    return None if value is None else float(value)
