"""The Parquet sink: a job's records as one Parquet file per batch in a shared folder or an s3:// prefix, instead
of in Redis.

``<sink>/<job>/batch-<n:06d>.parquet`` holds the records of batch ``n`` (schema: imgq/results/parquet_schema.py);
on S3 the key is the same path under the prefix. The sink is written and read through its Destination
(imgq/storage/destination.py): a local file is written under a temporary name in the same folder and renamed over
its final name, an object is sent as one PUT once whole (S3 shows an object only when its PUT completes). So:

- a reader sees a batch's file whole or not at all;
- a redelivered batch *replaces* its file instead of adding rows: exactly one row per image, by
  construction, whatever the number of deliveries (the name is the batch, like SageMaker's output keyed by
  input);
- a writer killed mid-write leaves at most a temporary file (``.imgq-*.tmp``; on S3 nothing), which is never
  read as a batch.

pyarrow is imported inside the functions so that importing imgq (and `imgq --help`) stays fast.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from imgq.contract import JOB_ID, ResultRecord
from imgq.results.parquet_schema import record_batch, records
from imgq.storage.locate import destination_for


class SinkFilesMissing(LookupError):
    """A sink job's records are not all in its files as this machine sees them (``IMGQ_SINK_DIR`` is not the
    workers' sink folder here, or files were removed): the message says which, and where they were looked for."""


class SinkNotRemovable(RuntimeError):
    """A sink job's files cannot be removed (a read-only sink, permissions): the job is kept."""


BATCH_FILE = re.compile(r"batch-(\d{6,})\.parquet")
MAX_BATCH_FILE_BYTES = 1024**3  # a batch of at most 1024 records (with embeddings: a few MB)
# Only names of this form are batches: temporary files (.imgq-*.tmp) and anything else in the folder are not.


def job_folder(sink_dir: str, job: str) -> str:
    """``<sink>/<job>``; ``job`` must be a job id (JOB_ID), so the folder cannot leave the sink: ValueError
    otherwise."""
    if not JOB_ID.fullmatch(job):
        raise ValueError(f"Expected a job id of letters, digits, '_' or '-'. Received: {job!r}")
    return os.path.join(sink_dir, job)


def batch_file(sink_dir: str, job: str, batch: int) -> str:
    """Where batch ``batch`` of ``job`` is: ``<sink>/<job>/batch-<n:06d>.parquet``."""
    if int(batch) < 0:
        raise ValueError(f"Expected a batch number >= 0. Received: {batch!r}")
    return os.path.join(job_folder(sink_dir, job), f"batch-{int(batch):06d}.parquet")


def write_batch(sink_dir: str, job: str, batch: int, batch_records: Iterable[ResultRecord],
                k: int | None = None) -> str:
    """Write (or replace) the file of batch ``batch`` of ``job`` with ``batch_records``, one row each, with
    ``k`` label ranks (default: the most labels a record has); returns its path.

    The file is durable before it appears (a local one flushed to disk before it is renamed, an object's PUT
    acknowledged): a worker acknowledges the batch once this returns, so a machine that crashes just after must
    not leave an empty file under the batch's name. Raises OSError (a full disk, a sink folder that is not
    writable, a store that refused the write or did not answer: WriteError).
    """
    rows = sorted(batch_records, key=lambda r: r.image)
    if any(r.job != job for r in rows):
        raise ValueError(f"Expected records of job {job!r}. Received: {sorted({r.job for r in rows})!r}")
    path = batch_file(sink_dir, job, batch)
    batch_rows = record_batch(rows, max((len(r.top_k) for r in rows), default=0) if k is None else k)
    with destination_for(path).writing(path, durable=True) as file:
        _write_table(batch_rows, file)
    return path


def _write_table(batch, file: BinaryIO) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_batches([batch]), file, compression="zstd")


def batch_numbers(sink_dir: str, job: str) -> list[int]:
    """The numbers of the batches of ``job`` that have a file, in order (none when the folder is missing).
    Raises OSError when the folder cannot be listed (a store that refused or did not answer: StoreError)."""
    folder = job_folder(sink_dir, job)
    names = destination_for(folder).names(folder)
    return sorted(int(m.group(1)) for m in map(BATCH_FILE.fullmatch, names) if m)


class DamagedSink(ValueError):
    """A batch file of a job's sink that cannot be read as one (truncated, overwritten, not Parquet, another
    schema); the message names the file and why, in one line."""


def read_job(sink_dir: str, job: str) -> Iterator[ResultRecord]:
    """Every record of ``job`` in the sink, in submission order: batch files in order, rows in image order.
    One file is held in memory at a time. Raises DamagedSink."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for number in batch_numbers(sink_dir, job):
        path = batch_file(sink_dir, job, number)
        try:
            with _opened(path) as file:
                rows = sorted(records(pq.read_table(file)), key=lambda r: r.image)
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:  # RefusedFile: ValueError
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise DamagedSink(f"Cannot read batch {number} of job {job} from its sink, {path}: {reason}") from exc
        yield from rows


def read_counted(sink_dir: str, job: str, counts: dict[int, int]) -> Iterator[ResultRecord]:
    """``read_job``, checked against ``counts`` (batch number -> records its worker wrote to its file, as
    counted in Redis). Raises SinkFilesMissing before any record when a counted batch has no file here, and
    after the last record when the files hold fewer records than were counted."""
    present = set(batch_numbers(sink_dir, job))
    missing = sorted(batch for batch, n in counts.items() if n > 0 and batch not in present)
    folder = job_folder(sink_dir, job)
    if missing:
        names = ", ".join(os.path.basename(batch_file(sink_dir, job, b)) for b in missing[:3])
        raise SinkFilesMissing(
            f"Job {job} keeps its records in Parquet files, and {len(missing)} of its {len(counts)} batch files "
            f"are not in {folder} on this machine ({names}{', ...' if len(missing) > 3 else ''}): run this where "
            "IMGQ_SINK_DIR is the workers' sink folder.")
    found = 0
    for record in read_job(sink_dir, job):
        found += 1
        yield record
    if found < (expected := sum(counts.values())):
        raise SinkFilesMissing(f"Job {job}'s Parquet files in {folder} hold {found} records, and the workers wrote "
                               f"{expected}: {expected - found} are missing.")


def remove_batch(sink_dir: str, job: str, batch: int) -> None:
    """Remove one batch's file (a worker's, written for a job deleted meanwhile), and the job's folder if it is
    empty then."""
    folder = job_folder(sink_dir, job)
    destination = destination_for(folder)
    destination.remove(batch_file(sink_dir, job, batch))
    destination.remove_folder(folder)


def count_rows(sink_dir: str, job: str) -> int:
    """How many rows the job's batch files hold (from their footers, without reading the rows)."""
    import pyarrow.parquet as pq

    total = 0
    for number in batch_numbers(sink_dir, job):
        with _opened(batch_file(sink_dir, job, number)) as file:
            total += pq.ParquetFile(file).metadata.num_rows
    return total


@contextlib.contextmanager
def _opened(path: str) -> Iterator[BinaryIO]:
    """A batch file opened by its destination's rules (no link, no pipe, at most MAX_BATCH_FILE_BYTES). Raises
    FileNotFoundError when it is gone, RefusedFile (a ValueError) when it is not one imgq reads, OSError."""
    with destination_for(path).open(path, MAX_BATCH_FILE_BYTES) as file:
        yield file


def remove_job(sink_dir: str, job: str) -> int:
    """Remove the job's batch files (and temporary files a killed writer left), then its folder if nothing
    else is in it; returns how many batch files went. Nothing imgq did not write is removed."""
    folder = job_folder(sink_dir, job)
    destination = destination_for(folder)
    removed = 0
    for name in destination.names(folder):
        if BATCH_FILE.fullmatch(name) or (name.startswith(".imgq-") and name.endswith(".tmp")):
            destination.remove(os.path.join(folder, name))
            removed += bool(BATCH_FILE.fullmatch(name))
    destination.remove_folder(folder)  # when something else is in it, it is left as it is
    return removed
