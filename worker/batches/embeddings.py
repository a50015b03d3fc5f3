"""A batch's embedding file (imgq/alike/batchfile.py): each classified image's feature-layer vector, perceptual
hash and content hash, written once per batch when the job asked for ``--embeddings``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from imgq.alike.batchfile import BatchVectors, normalised, write_batch
from imgq.alike.phash import phash
from imgq.contract import ResultRecord, error_record
from imgq.results.known import DIGEST_BYTES, stream_digest
from imgq.storage.errors import ImageError
from imgq.storage.locate import source_for

if TYPE_CHECKING:
    from imgq.settings import Settings

log = logging.getLogger(__name__)


def content_digest(path: str, settings: Settings) -> bytes:
    """The content hash of the file at ``path`` (imgq.results.known.file_digest's), opened by the worker's
    rules; 16 zero bytes when it cannot be read again (gone or changed since its decode)."""
    try:
        with source_for(path).open(path, settings.allowed_roots, settings.max_file_bytes) as file:
            digest = stream_digest(file, settings.max_file_bytes)
    except (ImageError, OSError):
        digest = None
    return digest or bytes(DIGEST_BYTES)


def keep_embeddings(records: list[ResultRecord], good: list, features: np.ndarray, settings: Settings,
                    identity: tuple[str, str], message) -> list[ResultRecord]:
    """Write the batch file of the ok ``records`` (``good``: the decoded images, row by row of ``features``,
    the feature layer's outputs; ``identity``: the model id and weights id) and return the records; when the
    file cannot be written, each ok record becomes a ``dump_failed`` error instead, as an activation dump's."""
    ok = {record.image for record in records if record.ok}
    rows = [row for row, d in enumerate(good) if d.image in ok]
    if not rows:
        return records
    chosen = [good[row] for row in rows]
    vectors = BatchVectors(
        image=np.array([d.image for d in chosen], dtype=np.int64),
        path=np.array([d.path.encode("utf-8", "surrogateescape") for d in chosen], dtype=np.bytes_),
        embedding=normalised(features[rows]),
        phash=np.array([phash(d.pixels) for d in chosen], dtype=np.uint64),
        content=np.frombuffer(b"".join(content_digest(d.path, settings) for d in chosen),
                              dtype=np.uint8).reshape(len(chosen), DIGEST_BYTES),
        model=identity[0], weights=identity[1])
    try:
        write_batch(settings.effective_dump_root, message.job, message.batch, vectors)
    except OSError as exc:
        log.error("Embedding file of batch %d of job %s not written: %s", message.batch, message.job, exc)
        return [_failed(record, exc) if record.ok else record for record in records]
    return records


def _failed(record: ResultRecord, exc: OSError) -> ResultRecord:
    return error_record(record.job, record.image, record.path, "dump_failed",
                        f"embedding file not written: {exc.strerror or exc}", model=record.model,
                        weights=record.weights, precision=record.precision, runtime=record.runtime,
                        worker=record.worker)
