"""One batch message -> one record per image: decode in threads, a (shared) forward pass, store the records."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import redis

from imgq.contract import BatchMessage, ResultRecord, error_record, ok_record
from imgq.jobs.deliveries import NoSuchJob
from imgq.labels.heads import HeadError
from imgq.results.finite import HEAD_NOT_FINITE, NOT_FINITE, finite_record
from imgq.settings import Settings
from imgq.storage.errors import SourceUnavailable
from worker.batches.dumps import write_dump
from worker.batches.embeddings import keep_embeddings
from worker.batches.heads import LoadedHead
from worker.batches.isolation import CRASHED_MESSAGE, Isolation
from worker.batches.known_batch import Read, classify_with_index
from worker.batches.labels import top_k
from worker.images.preprocess import RESNET50, ImageError, Target, decode_pixels, load_pixels, one_line

if TYPE_CHECKING:
    from worker.process import Runtime

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    image: int
    path: str
    pixels: np.ndarray | None
    error: ImageError | None
    decode_ms: float


def decode(image: int, path: str, settings: Settings, target: Target = RESNET50, read: Read | None = None) -> Decoded:
    """Decode one image into the pixels ``target`` (the model's input) needs; every failure of the image
    becomes an ImageError on the result, never an exception. A store that does not answer raises
    SourceUnavailable: that is no fact about the image, and no record may say it is.

    ``read``: what --skip-known's hashing already read of the image (worker/batches/known_batch.py), within the
    same bounds (the roots, IMGQ_MAX_FILE_BYTES): its bytes, decoded as they are, or the error the read met,
    recorded as it is; None: the image is read here."""
    started = time.perf_counter()
    pixels, error = None, None
    try:
        pixels = _pixels(path, settings, target, read)
    except ImageError as exc:
        error = exc
    except SourceUnavailable:
        raise  # the store did not answer: nothing is known of the image; the batch is tried again (tasks.py)
    except Exception as exc:  # a decoder bug on one odd file must not cost the batch
        log.exception("Unexpected failure decoding %s", path)
        error = ImageError("corrupt", f"{type(exc).__name__}: {one_line(exc, 160)}")
    return Decoded(image, path, pixels, error, (time.perf_counter() - started) * 1000)


def _pixels(path: str, settings: Settings, target: Target, read: Read | None):
    if isinstance(read, ImageError):
        raise read
    bounds = {"max_pixels": settings.max_pixels, "jpeg_draft": settings.jpeg_draft, "target": target}
    if read is not None:
        return decode_pixels(io.BytesIO(read), name=path, **bounds)
    return load_pixels(path, allowed_roots=settings.allowed_roots, max_file_bytes=settings.max_file_bytes, **bounds)


def run_batch(message: BatchMessage, runtime: Runtime, worker: str) -> list[ResultRecord]:
    """Classify the images of the message that have no record yet; store and return their records.

    - A cancelled job's batch is skipped, and so is a redelivered batch whose images all have records.
    - Lost ``max_deliveries`` times (its workers died holding it), the batch is decoded one image at a time
      (worker/batches/isolation.py), each marked as suspect while it is the only file its process reads: the image
      a worker died on is recorded as ``worker_crashed`` at the next delivery, and its neighbours are
      classified. A ``worker_crashed`` record never replaces one that another delivery stored meanwhile.
    - A failure of the forward pass itself becomes an ``internal`` error record for each image; an image whose
      row of outputs is not finite (NaN or infinite), a ``model_output`` error record.
    """
    job, store, deliveries = message.job, runtime.store, runtime.deliveries
    # Even reads wait for Redis: a task that failed at once would be handed back and taken again at once.
    if not _until_redis_answers(lambda: store.open_for_work(job)):
        log.info("Job %s is cancelled, done or gone: skipping batch %d", job, message.batch)
        return []
    with runtime.holding(job, message.batch):
        try:
            attempts, lost = _until_redis_answers(lambda: deliveries.begin(job, message.batch, runtime.worker_id))
        except NoSuchJob:  # deleted since the check above
            log.info("Job %s is gone: skipping batch %d", job, message.batch)
            return []
        return _run(message, runtime, worker, attempts, lost)


def _run(message: BatchMessage, runtime: Runtime, worker: str, attempts: int, lost: int) -> list[ResultRecord]:
    job, store, deliveries = message.job, runtime.store, runtime.deliveries
    try:
        todo = _until_redis_answers(lambda: _todo(message, store))
        if not todo:
            return []
        _until_redis_answers(lambda: store.mark_started(job))
        isolation = Isolation(job, runtime) if lost >= runtime.settings.max_deliveries else None
        if isolation:
            log.warning("Batch %d of job %s: delivery %d, %d lost, decoding one image at a time", message.batch,
                        job, attempts, lost)
        if message.known:
            records = classify_with_index(message, todo, runtime, worker,
                                          lambda items, reads: _classify(message, items, runtime, worker,
                                                                         isolation, reads),
                                          isolation)
        else:
            records = _classify(message, todo, runtime, worker, isolation)
        # Scores the checks above did not see (an answer of the known index stored by an earlier imgq) are made
        # model_output too: a record with a NaN score is never stored.
        records = [finite_record(record) for record in records]
        if message.sink:
            _sink(message, records, runtime)
        else:
            _until_redis_answers(lambda: store.record_results(job, records))
        return records
    finally:
        _until_redis_answers(lambda: deliveries.finish(job, message.batch))


def _todo(message: BatchMessage, store) -> list[tuple[int, str]]:
    """The images of the batch that still need a record. A batch of a job with a Parquet sink is all or
    nothing: its file holds every image of it, so a redelivery redoes it whole, unless its file was counted."""
    if message.sink:
        done = store.sunk_count(message.job, message.batch) >= len(message.images)
        return [] if done else list(message.images)
    wanted = set(store.missing(message.job, [image for image, _ in message.images]))
    return [(image, path) for image, path in message.images if image in wanted]


def _sink(message: BatchMessage, records: list[ResultRecord], runtime: Runtime) -> None:
    """Write the batch's records as its Parquet file (replacing one a lost delivery wrote), then count them.

    The file first: a worker that dies between the two leaves a file the next delivery replaces. An OSError
    (a full disk) fails the task, which the reconciler queues again; nothing is counted then. A job deleted
    during the batch counts nothing, and the file just written is removed: it must not outlive its job."""
    from imgq.results import sink

    sink_dir = runtime.settings.effective_sink_dir
    sink.write_batch(sink_dir, message.job, message.batch, records, k=message.top_k)
    if _until_redis_answers(lambda: runtime.store.record_sunk(message.job, message.batch, records)) < 0:
        log.info("Job %s was deleted during batch %d: its file removed", message.job, message.batch)
        sink.remove_batch(sink_dir, message.job, message.batch)


REDIS_PATIENCE_SECONDS = 300

# Redis answers, but refuses writes for a while: out of memory at maxmemory with noeviction (OOM), a replica
# after a failover (READONLY), loading its data after a restart (LOADING, a ConnectionError in redis-py),
# no master (MASTERDOWN), an ACL being fixed (NOPERM). Each passes; the batch's work should not be lost.
PASSING_REFUSALS = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError,
                    redis.exceptions.MasterDownError, redis.exceptions.NoPermissionError,
                    redis.exceptions.TryAgainError)


def _until_redis_answers(write, patience: float = REDIS_PATIENCE_SECONDS):
    """Run ``write``, waiting through a Redis restart or refusal: the batch's work is done, keep it rather
    than redo it.

    Raises the last error after ``patience`` seconds; the task then hands its message back to the queue
    (worker/tasks.py), so no batch is lost to a write that failed.
    """
    deadline, delay = time.monotonic() + patience, 0.5
    while True:
        try:
            return write()
        except (redis.ConnectionError, redis.TimeoutError, *PASSING_REFUSALS) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("Redis unreachable or refusing writes (%s): retrying in %.1f s", one_line(exc), delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _classify(message: BatchMessage, todo: list[tuple[int, str]], runtime: Runtime, worker: str,
              isolation: Isolation | None, reads: Mapping[int, Read] | None = None) -> list[ResultRecord]:
    """``reads``: what was read already of some of the images (see ``decode``)."""
    if not todo:
        return []
    reads = reads or {}
    gatherer = runtime.gatherer
    with gatherer.decoding():
        if isolation:
            decoded = _decode_one_by_one(isolation, todo, runtime, reads)
        else:
            decoded = list(runtime.decode_pool.map(lambda item: _decode_shared(item, runtime, reads.get(item[0])),
                                                   todo))
        good = [d for d in decoded if d.error is None]
        classifier = runtime.classifier
        head = _head(message, runtime) if good else None
        forward_pass = gatherer.submit(classifier.model_input([d.pixels for d in good]),
                                       _layers(message, head, classifier.spec)) if good else None
    provenance = {"model": classifier.model_id, "weights": gatherer.weights_id, "precision": gatherer.precision,
                  "runtime": classifier.runtime, "worker": worker}
    records = [_error(message, d, d.error.code, d.error.message, provenance) for d in decoded if d.error]
    if forward_pass is not None:
        records += _classified(message, good, forward_pass, provenance, runtime.settings.effective_dump_root,
                               runtime.settings.forward_pass_timeout, classifier.spec, head, runtime.settings)
    return records


def _head(message: BatchMessage, runtime: Runtime) -> LoadedHead | dict | None:
    """The job's head, ready to apply; or the head entry every record gets when it cannot be applied
    (``{"name", "error"}``: made on another model or weights, or gone from Redis); None without a head."""
    if not message.head:
        return None
    try:
        loaded = _until_redis_answers(lambda: runtime.heads.get(runtime.store, message.head))
    except HeadError as exc:
        return {"name": message.head, "error": str(exc)}
    problem = loaded.head.mismatch(runtime.classifier.model_id, runtime.gatherer.weights_id)
    return {"name": loaded.head.name, "error": problem} if problem else loaded


def _layers(message: BatchMessage, head: LoadedHead | dict | None, spec=None) -> tuple[str, ...]:
    """The layers the forward pass returns: the dumped ones, the head's features and, for a job that keeps
    embeddings, the model's feature layer (the last two not dumped unless asked)."""
    layers = message.activations
    if isinstance(head, LoadedHead) and head.head.feature_layer not in layers:
        layers = (*layers, head.head.feature_layer)
    feature = getattr(spec, "feature_layer", None)
    if message.embeddings and feature and feature not in layers:
        layers = (*layers, feature)
    return layers


def _decode_shared(item: tuple[int, str], runtime: Runtime, read: Read | None = None) -> Decoded:
    with runtime.decode_lock.shared():  # an isolated decode elsewhere in the process waits for none of these
        return decode(*item, runtime.settings, runtime.classifier.target, read)


def _decode_one_by_one(isolation: Isolation, todo: list[tuple[int, str]], runtime: Runtime,
                       reads: Mapping[int, Read]) -> list[Decoded]:
    decoded = []
    for image, path in todo:
        if isolation.crashed(image):
            decoded.append(Decoded(image, path, None, ImageError("worker_crashed", CRASHED_MESSAGE), 0.0))
        else:
            decoded.append(isolation.alone(image, lambda i=image, p=path: decode(i, p, runtime.settings,
                                                                                    runtime.classifier.target,
                                                                                    reads.get(i))))
    return decoded


def _classified(message: BatchMessage, good: list[Decoded], forward_pass: Future, provenance: dict,
                dump_root: str, timeout: float, spec=None, head: LoadedHead | dict | None = None,
                settings: Settings | None = None) -> list[ResultRecord]:
    try:
        probabilities, activations, share_ms, precision = forward_pass.result(timeout=timeout)
    except TimeoutError:
        log.error("No forward pass for batch %d of job %s within %.0f s", message.batch, message.job, timeout)
        reason = f"forward pass did not return within {timeout:.0f} s (IMGQ_FORWARD_PASS_TIMEOUT)"
        return [_error(message, d, "internal", reason, provenance) for d in good]
    except Exception as exc:
        log.exception("Forward pass failed for batch %d of job %s", message.batch, message.job)
        reason = f"forward pass failed: {type(exc).__name__}: {one_line(exc, 160)}"
        return [_error(message, d, "internal", reason, provenance) for d in good]
    records = []
    provenance = {**provenance, "precision": precision}  # what this pass ran in (int8 switches from fp32)
    head_entries = _head_entries(head, activations, len(good), message.top_k)
    finite = np.isfinite(probabilities).all(axis=1)
    for row, (d, p) in enumerate(zip(good, probabilities, strict=True)):
        if not finite[row]:  # its top-k would rank NaNs: no labels, and no dump of what made them
            records.append(_error(message, d, "model_output", _not_finite(p), provenance))
            continue
        timing = {"decode_ms": round(d.decode_ms, 2), "inference_ms": round(share_ms, 2)}
        dump = {}
        if head_entries is not None:
            dump["head"] = head_entries[row]
        if message.activations:
            try:
                dump["activations"] = write_dump(dump_root, message.job, d.image,
                                                 {name: activations[name][row] for name in message.activations},
                                                 message.activations_dtype)
            except OSError as exc:  # a full disk costs this image its record, not the worker
                records.append(_error(message, d, "dump_failed", f"{exc.strerror or exc}", provenance))
                continue
        records.append(ok_record(message.job, d.image, d.path, top_k(p, message.top_k, spec), **provenance, **timing,
                                 **dump))
    if message.embeddings and settings is not None and spec is not None and spec.feature_layer in activations:
        records = keep_embeddings(records, good, activations[spec.feature_layer], settings,
                                  (provenance["model"], provenance["weights"]), message)
    return records


def _head_entries(head: LoadedHead | dict | None, activations: dict, n: int, k: int) -> list[dict] | None:
    """Each image's head entry (see ResultRecord.head), or None for a job without a head."""
    if head is None:
        return None
    if isinstance(head, dict):
        return [head] * n
    try:
        scores = head.scores(activations[head.head.feature_layer])
    except HeadError as exc:
        return [{"name": head.head.name, "error": str(exc)}] * n
    return [head.top(row, k) if np.isfinite(row).all() else {"name": head.head.name, "error": HEAD_NOT_FINITE}
            for row in scores]


def _not_finite(outputs: np.ndarray) -> str:
    """The model_output message of one image's row of outputs: how many are NaN or infinite."""
    return f"{NOT_FINITE}: {int((~np.isfinite(outputs)).sum())} of {outputs.size}"


def _error(message: BatchMessage, d: Decoded, code: str, text: str, provenance: dict) -> ResultRecord:
    return error_record(message.job, d.image, d.path, code, text, **provenance,
                        decode_ms=round(d.decode_ms, 2), inference_ms=0.0)
