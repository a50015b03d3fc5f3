"""One batch message -> one record per image: decode in threads, a (shared) forward pass, store the records."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import redis

from imgq.contract import MODEL_NAME, BatchMessage, error_record, ok_record
from imgq.settings import Settings
from worker.dumps import write_dump
from worker.known_batch import classify_with_index
from worker.labels import top_k
from worker.preprocess import TARGET_SIZE, ImageError, load_pixels, one_line, to_model_input

if TYPE_CHECKING:
    from worker.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    image: int
    path: str
    pixels: np.ndarray | None
    error: ImageError | None
    decode_ms: float


# Test-only: a path containing this text makes the decoder kill its process, as a crashing codec would
# (tests/reliability). Never set it in production.
_CRASH_ON = os.environ.get("IMGQ_TEST_CRASH_ON", "")


def decode(image: int, path: str, settings: Settings) -> Decoded:
    """Decode one image; every failure becomes an ImageError on the result, never an exception."""
    if _CRASH_ON and _CRASH_ON in path:
        os._exit(70)
    started = time.perf_counter()
    pixels, error = None, None
    try:
        pixels = load_pixels(path, allowed_roots=settings.allowed_roots, max_pixels=settings.max_pixels,
                             jpeg_draft=settings.jpeg_draft)
    except ImageError as exc:
        error = exc
    except Exception as exc:  # a decoder bug on one odd file must not cost the batch
        log.exception("Unexpected failure decoding %s", path)
        error = ImageError("corrupt", f"{type(exc).__name__}: {one_line(exc, 160)}")
    return Decoded(image, path, pixels, error, (time.perf_counter() - started) * 1000)


def run_batch(message: BatchMessage, runtime: Runtime, worker: str) -> list[dict]:
    """Classify the images of the message that have no record yet; store and return their records.

    - A cancelled job's batch is skipped, and so is a redelivered batch whose images all have records.
    - Delivered more than ``max_deliveries`` times (its workers died), the batch is decoded one image at
      a time, each marked as suspect while it is decoded: the image a worker died on is recorded as
      ``worker_crashed`` at the next delivery, and its neighbours are classified.
    - A failure of the forward pass itself becomes an ``internal`` error record for each image.
    """
    job, store, deliveries = message.job, runtime.store, runtime.deliveries
    if store.is_cancelled(job):
        log.info("Job %s is cancelled: skipping batch %d", job, message.batch)
        return []
    with runtime.holding(job, message.batch):
        return _run(message, runtime, worker, deliveries.begin(job, message.batch, runtime.worker_id))


def _run(message: BatchMessage, runtime: Runtime, worker: str, attempts: int) -> list[dict]:
    job, store, deliveries = message.job, runtime.store, runtime.deliveries
    try:
        wanted = set(store.missing(job, [image for image, _ in message.images]))
        todo = [(image, path) for image, path in message.images if image in wanted]
        if not todo:
            return []
        store.mark_started(job)
        isolate = attempts > runtime.settings.max_deliveries
        if isolate:
            log.warning("Batch %d of job %s: delivery %d, decoding one image at a time", message.batch, job, attempts)
        if message.known:
            records = classify_with_index(message, todo, runtime, worker,
                                          lambda items: _classify(message, items, runtime, worker, isolate))
        else:
            records = _classify(message, todo, runtime, worker, isolate)
        _until_redis_answers(lambda: store.record_results(job, records))
        return records
    finally:
        _until_redis_answers(lambda: deliveries.end(job, message.batch))


REDIS_PATIENCE_SECONDS = 300


def _until_redis_answers(write, patience: float = REDIS_PATIENCE_SECONDS):
    """Run ``write``, waiting through a Redis restart: the batch's work is done, keep it rather than redo it.

    Raises the last connection error after ``patience`` seconds; the reconciler then re-queues the batch.
    """
    deadline, delay = time.monotonic() + patience, 0.5
    while True:
        try:
            return write()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("Redis unreachable (%s): retrying in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _classify(message: BatchMessage, todo: list[tuple[int, str]], runtime: Runtime, worker: str,
              isolate: bool) -> list[dict]:
    if not todo:
        return []
    gatherer = runtime.gatherer
    with gatherer.decoding():
        if isolate:
            decoded = _decode_one_by_one(message.job, todo, runtime)
        else:
            decoded = list(runtime.pool.map(lambda item: decode(*item, runtime.settings), todo))
        good = [d for d in decoded if d.error is None]
        forward_pass = gatherer.submit(_model_input(good), message.activations) if good else None
    provenance = {"model": MODEL_NAME, "weights": gatherer.weights_id, "precision": gatherer.precision,
                  "runtime": runtime.classifier.runtime, "worker": worker}
    records = [_error(message, d, d.error.code, d.error.message, provenance) for d in decoded if d.error]
    if forward_pass is not None:
        records += _classified(message, good, forward_pass, provenance, runtime.settings.effective_dump_root)
    return records


def _decode_one_by_one(job: str, todo: list[tuple[int, str]], runtime: Runtime) -> list[Decoded]:
    deliveries = runtime.deliveries
    suspects = deliveries.suspects(job)
    decoded = []
    for image, path in todo:
        if image in suspects:
            crashed = ImageError("worker_crashed", "a worker process died while decoding this image")
            decoded.append(Decoded(image, path, None, crashed, 0.0))
            continue
        deliveries.suspect(job, image, runtime.worker_id)
        decoded.append(decode(image, path, runtime.settings))
        deliveries.clear_suspect(job, image)
    return decoded


def _model_input(good: list[Decoded]) -> np.ndarray:
    batch = np.empty((len(good), *TARGET_SIZE, 3), dtype=np.float32)
    for row, d in zip(batch, good, strict=True):
        to_model_input(d.pixels, out=row)
    return batch


def _classified(message: BatchMessage, good: list[Decoded], forward_pass: Future, provenance: dict,
                dump_root: str) -> list[dict]:
    try:
        probabilities, activations, share_ms = forward_pass.result()
    except Exception as exc:
        log.exception("Forward pass failed for batch %d of job %s", message.batch, message.job)
        reason = f"forward pass failed: {type(exc).__name__}: {one_line(exc, 160)}"
        return [_error(message, d, "internal", reason, provenance) for d in good]
    records = []
    for row, (d, p) in enumerate(zip(good, probabilities, strict=True)):
        timing = {"decode_ms": round(d.decode_ms, 2), "inference_ms": round(share_ms, 2)}
        dump = {}
        if activations:
            try:
                dump["activations"] = write_dump(dump_root, message.job, d.image,
                                                 {name: value[row] for name, value in activations.items()},
                                                 message.activations_dtype)
            except OSError as exc:  # a full disk costs this image its record, not the worker
                records.append(_error(message, d, "dump_failed", f"{exc.strerror or exc}", provenance))
                continue
        records.append(ok_record(message.job, d.image, d.path, top_k(p, message.top_k), **provenance, **timing,
                                 **dump))
    return records


def _error(message: BatchMessage, d: Decoded, code: str, text: str, provenance: dict) -> dict:
    return error_record(message.job, d.image, d.path, code, text, **provenance,
                        decode_ms=round(d.decode_ms, 2), inference_ms=0.0)
