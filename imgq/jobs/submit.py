"""Cut chosen images (imgq.storage.walk) into batches and queue them as one job.

A submission stages its batch messages in Redis first and makes the job visible only when the walk has
finished, so an empty selection, a missing path or a failure half-way leaves no job behind. Then the
staged batches are published to the Celery queue (imgq.jobs.queue).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import count, islice

from imgq.contract import MODEL_NAME, BatchMessage, BatchRef
from imgq.jobs.queue import publish
from imgq.labels import heads
from imgq.labels.heads import Head
from imgq.results.store import ResultStore
from imgq.settings import Settings
from imgq.storage.selection import Skipped

STAGE_BATCHES = 500  # batch messages per Redis round trip while staging...
STAGE_IMAGES = 16_000  # ...or fewer, once they hold this many images (500 batches of 32): what a submission holds
# at once, whatever its batch size (500 batches of 1024 would be half a million paths)


class EmptySelection(ValueError):
    """The paths and filters given select no image."""


class QueueingFailed(RuntimeError):
    """The job was committed, but publishing its batches failed part-way: the job exists (its id is
    ``job``) and will complete, since the workers' reconciler queues a stalled job's batches again; it must
    not be submitted a second time."""

    def __init__(self, job: str, cause: BaseException):
        super().__init__(f"Job {job} was created, but queueing its batches failed ({cause}). Do not submit it "
                         f"again: the workers queue a stalled job's batches within IMGQ_RECONCILE_SECONDS, or "
                         f"run `imgq requeue {job}` once the broker answers.")
        self.job = job


def batches(images: Iterable[str], job: str, batch_size: int, top_k: int, activations: tuple[str, ...] = (),
            activations_dtype: str = "float16", known: str = "", sink: bool = False,
            head: str = "", model: str = MODEL_NAME, weights: str = "",
            embeddings: bool = False, precision: str = "") -> Iterator[BatchMessage]:
    """Cut ``images`` into batch messages; image ids count from 0 in submission order."""
    iterator = iter(images)
    image_id = 0
    for number in count():
        chunk = list(islice(iterator, batch_size))
        if not chunk:
            return
        items = tuple(enumerate(chunk, start=image_id))
        image_id += len(chunk)
        yield BatchMessage(job=job, batch=number, images=items, top_k=top_k, activations=activations,
                           activations_dtype=activations_dtype, known=known, sink=sink, head=head, model=model,
                           weights=weights, embeddings=embeddings, precision=precision)


@dataclass(frozen=True)
class Submitted:
    job: str
    total: int
    batches: int


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def submit(images: Iterable[str], *, settings: Settings, store: ResultStore, name: str = "", job: str | None = None,
           top_k: int | None = None, batch_size: int | None = None, params: dict | None = None,
           activations: tuple[str, ...] = (), activations_dtype: str = "float16", known: str = "", sink: bool = False,
           limit_check: Callable[[int], None] | None = None, hold_retention: bool = False,
           head: Head | None = None, skipped: Skipped | None = None, model: str = MODEL_NAME,
           weights: str = "", embeddings: bool = False, precision: str = "") -> Submitted:
    """Queue ``images`` as one job. Raises EmptySelection, or redis/kombu errors when Redis is down.

    ``job``: the id to give the job (default: a new one, ``new_job_id``).
    ``activations``: layer names (checked with imgq.models.layers.check_layers) to dump for every image.
    ``known``: "skip" or "refresh" to use the content-hash index (imgq/results/known.py), "" to leave it alone.
    ``sink``: the workers write the records as Parquet files into their sink folder instead of into Redis.
    ``model``: the name of the model the job asks for (checked by the caller: imgq.models.spec.check_model_name);
    its batches go to that model's workers only, and wait in its queue while none is alive.
    ``weights``: the key of the weights the job asks for (imgq.models.weights.weights_key; "": any weights of
    the model): its batches go to the workers of the model with those weights only, and wait until one is alive.
    ``precision``: the precision its forward passes must run in (imgq.contract.PRECISIONS; "": any): its batches
    go only to the workers serving jobs at that precision (Heartbeat.job_precision), and wait until one is alive.
    ``limit_check``: called with the number of images once the walk is done, before the job is committed;
    whatever it raises aborts the submission with nothing queued (e.g. producer.exports.dumps.size_guard).
    ``skipped``: the walk's count of files that are not images (imgq.storage.walk.iter_images), kept in the job's hash.
    ``hold_retention``: the finished job is kept until ``ResultStore.release_retention`` (a schedule's job).
    ``head``: a head (imgq/labels/heads.py) the workers apply in the same forward pass; put in Redis for them.
    ``embeddings``: the workers keep each image's embedding, perceptual and content hashes per batch
    (imgq/alike/batchfile.py).
    """
    top_k = top_k or settings.top_k
    batch_size = batch_size or settings.batch_size
    job = job or new_job_id()
    total = n_batches = 0
    pending: list[dict] = []
    digest = heads.share(store.redis, store.keys, head) if head is not None else ""
    for message in batches(images, job, batch_size, top_k, activations, activations_dtype, known, sink, digest,
                           model, weights, embeddings, precision):
        pending.append(message.to_dict())
        total += len(message.images)
        n_batches += 1
        if len(pending) >= STAGE_BATCHES or len(pending) * batch_size >= STAGE_IMAGES:
            store.stage_batches(job, pending)
            pending = []
    if pending:
        store.stage_batches(job, pending)
    if total == 0:
        note = f"; {skipped.summary()}" if skipped and skipped.summary() else ""
        raise EmptySelection(f"No images selected: check the paths, --include and --recursive{note}.")
    if limit_check is not None:
        try:
            limit_check(total)
        except BaseException:
            store.discard_staged(job)
            raise
    store.commit_job(job, name=name or job, total=total, batches=n_batches, retention=settings.retention,
                     skipped=skipped.to_fields() if skipped else None,
                     params={"top_k": top_k, "batch_size": batch_size, "model": model,
                             **({"weights": weights} if weights else {}),
                             **({"precision": precision} if precision else {}), **(params or {}),
                             **({"activations": list(activations), "activations_dtype": activations_dtype}
                                if activations else {}), **({"known": known} if known else {}),
                             **({"sink": True} if sink else {}), **({"embeddings": True} if embeddings else {}),
                             **({"head": {"name": head.name, "digest": digest, "labels": list(head.labels)}}
                                if head is not None else {})}, publishing=True,
                     hold_retention=hold_retention)
    try:
        publish((BatchRef(job, number, model, weights, precision) for number in range(n_batches)), settings)
        store.end_publishing(job)
    except Exception as exc:
        raise QueueingFailed(job, exc) from exc
    return Submitted(job, total, n_batches)
