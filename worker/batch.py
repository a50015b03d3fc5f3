"""One batch message -> one record per image: decode in threads, a (shared) forward pass, store the records."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np

from imgq.contract import MODEL_NAME, BatchMessage, error_record, ok_record
from imgq.settings import Settings
from imgq.store import ResultStore
from worker.gather import Gatherer
from worker.labels import top_k
from worker.preprocess import TARGET_SIZE, ImageError, load_pixels, to_model_input

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    image: int
    path: str
    pixels: np.ndarray | None
    error: ImageError | None
    decode_ms: float


def decode(image: int, path: str, settings: Settings) -> Decoded:
    """Decode one image; every failure becomes an ImageError on the result, never an exception."""
    started = time.perf_counter()
    pixels, error = None, None
    try:
        pixels = load_pixels(path, allowed_roots=settings.allowed_roots, max_pixels=settings.max_pixels,
                             jpeg_draft=settings.jpeg_draft)
    except ImageError as exc:
        error = exc
    except Exception as exc:  # a decoder bug on one odd file must not cost the batch
        log.exception("Unexpected failure decoding %s", path)
        error = ImageError("corrupt", f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}")
    return Decoded(image, path, pixels, error, (time.perf_counter() - started) * 1000)


def run_batch(message: BatchMessage, *, gatherer: Gatherer, store: ResultStore, settings: Settings,
              pool: Executor, worker: str) -> int:
    """Classify the message's images and store one record per image. Returns the records written.

    A cancelled job's batch is skipped (no records). A failure of the forward pass itself becomes an
    ``internal`` error record for each image of the batch, so that the job still completes.
    """
    if store.is_cancelled(message.job):
        log.info("Job %s is cancelled: skipping batch %d", message.job, message.batch)
        return 0
    store.mark_started(message.job)
    with gatherer.decoding():
        decoded = list(pool.map(lambda item: decode(*item, settings), message.images))
        good = [d for d in decoded if d.error is None]
        forward_pass = gatherer.submit(_model_input(good)) if good else None
    provenance = {"model": MODEL_NAME, "weights": gatherer.weights_id, "precision": gatherer.precision,
                  "worker": worker}
    records = [_error(message, d, d.error.code, d.error.message, provenance) for d in decoded if d.error]
    if forward_pass is not None:
        records += _classified(message, good, forward_pass, provenance)
    store.record_results(message.job, records)
    return len(records)


def _model_input(good: list[Decoded]) -> np.ndarray:
    batch = np.empty((len(good), *TARGET_SIZE, 3), dtype=np.float32)
    for row, d in zip(batch, good, strict=True):
        to_model_input(d.pixels, out=row)
    return batch


def _classified(message: BatchMessage, good: list[Decoded], forward_pass: Future, provenance: dict) -> list[dict]:
    try:
        probabilities, share_ms = forward_pass.result()
    except Exception as exc:
        log.exception("Forward pass failed for batch %d of job %s", message.batch, message.job)
        reason = f"forward pass failed: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
        return [_error(message, d, "internal", reason, provenance) for d in good]
    return [
        ok_record(message.job, d.image, d.path, top_k(p, message.top_k), **provenance,
                  decode_ms=round(d.decode_ms, 2), inference_ms=round(share_ms, 2))
        for d, p in zip(good, probabilities, strict=True)
    ]


def _error(message: BatchMessage, d: Decoded, code: str, text: str, provenance: dict) -> dict:
    return error_record(message.job, d.image, d.path, code, text, **provenance,
                        decode_ms=round(d.decode_ms, 2), inference_ms=0.0)
