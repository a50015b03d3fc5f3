"""A batch with the content-hash index (`imgq submit --skip-known` / `--force`): each distinct picture is
classified once, whatever its name, its job or its copies.

Per batch: hash every file; the first image of each digest leads, the others copy its result. Leaders
already in the index are answered from it ("skip"); the rest are claimed and classified, and their
results remembered. A leader claimed by another batch (a copy classified elsewhere right now) waits for
that result instead of computing it again.

Each image is read once (one GET of an s3:// object, one read of a file): the bytes hashed are kept (``Held``)
and the leaders the index does not answer are decoded from them, so the result remembered under a digest is
the result of exactly the bytes that made it, even when a file changes between the two steps. What a batch
keeps is bounded by IMGQ_MAX_FILE_BYTES (one image at the cap); an image past that bound is read again to be
decoded. An image that cannot be read is recorded from the error its one read met.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from functools import partial

from imgq.contract import BatchMessage, Label, ResultRecord, error_record, ok_record
from imgq.labels.classes import class_index, class_numbers
from imgq.labels.heads import HeadError
from imgq.models.spec import scoring_digest
from imgq.results.known import KnownImages, stream_digest
from imgq.storage.errors import ImageError
from imgq.storage.locate import source_for
from worker.batches.isolation import Isolation
from worker.images.preprocess import file_size

log = logging.getLogger(__name__)

WAIT_FOR_OTHERS_SECONDS = 60.0


Read = bytes | ImageError
# What the hashing pass kept of one image for its decode: its bytes, or the error its read met.


class Held:
    """The bytes of a batch's images, kept from hashing to decoding, within ``budget`` bytes in all (thread-safe:
    the decode threads hash at once). An image's error is kept whatever the budget: it costs nothing."""

    def __init__(self, budget: int):
        self.budget = budget
        self.reads: dict[int, Read] = {}
        self._lock = threading.Lock()

    def reserve(self, size: int) -> bool:
        """Take ``size`` bytes of the budget; False (nothing taken) when they do not fit."""
        with self._lock:
            if size > self.budget:
                return False
            self.budget -= size
            return True

    def keep(self, image: int, read: Read) -> None:
        with self._lock:
            self.reads[image] = read

    def only(self, images: list[int]) -> dict[int, Read]:
        """What is kept of ``images``; the rest is let go (their bytes are no longer needed)."""
        with self._lock:
            wanted = set(images)
            self.reads = {image: read for image, read in self.reads.items() if image in wanted}
            return dict(self.reads)


class Copying:
    """``file`` read as it is (its name and all), with what is read copied into memory as well."""

    def __init__(self, file):
        self._file = file
        self.copy = io.BytesIO()

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self.copy.write(data)
        return data

    def __getattr__(self, name: str):
        return getattr(self._file, name)


def classify_with_index(message: BatchMessage, todo: list[tuple[int, str]], runtime, worker: str,
                        classify: Callable[[list[tuple[int, str]], dict[int, Read]], list[ResultRecord]],
                        isolation: Isolation | None = None) -> list[ResultRecord]:
    """Records for ``todo``; ``classify(items, reads)`` runs the ordinary path (decode, forward pass) on some,
    decoding an image from what ``reads`` holds of it (its bytes, or the error its read met) instead of
    reading it again.

    In isolation, files are hashed one at a time as suspects too (reading a file can kill a worker as well),
    and a file a worker died on is left unhashed: the ordinary path then records it ``worker_crashed``.
    """
    precision = runtime.gatherer.precision  # the index of this precision; a pass in another is not remembered
    index = KnownImages(runtime.store.raw, runtime.store.keys, runtime.gatherer.weights_id,
                        precision, message.top_k, model_id=runtime.model_id, head=message.head,
                        scoring=scoring_digest(runtime.classifier.spec, runtime.settings.jpeg_draft))
    held = Held(runtime.settings.max_file_bytes)
    digests = dict(zip(todo, _digests(todo, runtime, isolation, held), strict=True))
    leaders: dict[bytes, tuple[int, str]] = {}
    for item, digest in digests.items():
        if digest is not None:
            leaders.setdefault(digest, item)
    asked = index.ask(list(leaders), skip_known=message.known == "skip",
                      refresh_for=message.job if message.known == "refresh" else None)
    unhashed = [item for item, digest in digests.items() if digest is None]  # errors: the ordinary path says which
    first = [leaders[d] for d in leaders if d in asked.mine] + unhashed
    # Only the images that may be decoded keep their bytes: the known ones, the copies, are let go now.
    reads = held.only([image for image, _ in first] + [leaders[d][0] for d in asked.theirs])
    computed = {r.image: r for r in classify(first, reads)}
    mine = {d: computed[leaders[d][0]] for d in asked.mine}
    answers = _answers({d: r for d, r in mine.items() if r.precision == precision}, _head_labels(message, runtime),
                       index.head)
    known = asked.known | index.tell(asked, answers, WAIT_FOR_OTHERS_SECONDS)
    late = [leaders[d] for d in asked.theirs if d not in known]  # their batch died or failed them: do it here
    computed |= {r.image: r for r in classify(late, reads)}
    return [_record_for(message, item, digests[item], leaders, computed, known, runtime, worker) for item in todo]


def _digests(todo: list[tuple[int, str]], runtime, isolation: Isolation | None, held: Held) -> list[bytes | None]:
    if isolation is None:
        return list(runtime.decode_pool.map(lambda item: _digest_shared(*item, runtime, held), todo))
    return [None if isolation.crashed(image) else isolation.alone(image, partial(_digest, image, path, runtime, held))
            for image, path in todo]


def _digest_shared(image: int, path: str, runtime, held: Held) -> bytes | None:
    with runtime.decode_lock.shared():
        return _digest(image, path, runtime, held)


def _digest(image: int, path: str, runtime, held: Held) -> bytes | None:
    """The file's digest, read in chunks, its bytes kept in ``held`` while the budget allows; None when it cannot
    be read (its error kept in ``held``: the ordinary path records it without reading again) or is over
    IMGQ_MAX_FILE_BYTES. A store that does not answer raises SourceUnavailable (the batch is tried again)."""
    settings = runtime.settings
    try:
        with source_for(path).open(path, settings.allowed_roots, settings.max_file_bytes) as file:
            size = file_size(file)
            copying = Copying(file) if held.reserve(size) else None
            digest = stream_digest(copying or file, settings.max_file_bytes)
            if copying is not None and digest is not None:
                held.keep(image, copying.copy.getvalue())
            return digest
    except ImageError as exc:
        held.keep(image, exc)
        return None
    except OSError:  # a read that failed midway: the ordinary path reads it again and says why
        return None


def _head_labels(message: BatchMessage, runtime) -> tuple[str, ...] | None:
    """The labels of the job's head, or None (no head, or one this worker cannot apply)."""
    if not message.head:
        return None
    try:
        return runtime.heads.get(runtime.store, message.head).head.labels
    except HeadError:
        return None


def _labels(known: list[tuple[int, float]], spec) -> list[Label]:
    """Stored ``(class index, score)`` pairs as the model's labels (worker/batches/labels.py's forms), named
    from the labels this worker loaded: a class renamed in labels.txt is renamed in old answers too, as a fresh
    run would name it (why labels.txt is not in the index's key: imgq.models.spec.SCORING_FIELDS)."""
    if spec.imagenet:
        names = class_index()
        return [Label(names[i][0], names[i][1], score) for i, score in known]
    return [Label("", spec.labels[i], score, i) for i, score in known]


def _answers(results: dict[bytes, ResultRecord], head_labels: tuple[str, ...] | None, head: str) -> dict:
    """What the index keeps of the ok results: top-k as (class number, score); in a head's index, only those
    whose head was applied (a head entry with labels), with its labels as positions in the head's labels. A
    result left out (an error) has its claim released by ``tell``."""
    numbers = class_numbers()
    # A user model's labels carry their class index; an ImageNet model's are numbered by their wnid.
    ok: dict[bytes, object] = {d: [(t.index if t.index is not None else numbers[t.wnid], t.score) for t in r.top_k]
                               for d, r in results.items() if r.ok}
    if head:
        ok = {d: (top, [(head_labels.index(t["label"]), t["score"]) for t in results[d].head["top_k"]])
              for d, top in ok.items() if head_labels and (results[d].head or {}).get("top_k")}
    return ok


def _head_entry(runtime, digest: str, numbers: list[tuple[int, float]]) -> dict:
    """The head entry of a known image, from the head's labels as the index keeps them."""
    loaded = runtime.heads.get(runtime.store, digest)
    return {"name": loaded.head.name,
            "top_k": [{"label": loaded.head.labels[i], "score": score} for i, score in numbers]}


def _record_for(message, item, digest, leaders, computed, known, runtime, worker) -> ResultRecord:
    image, path = item
    if image in computed:
        return computed[image]
    classifier = runtime.classifier
    provenance = {"model": classifier.model_id, "weights": runtime.gatherer.weights_id,
                  "precision": runtime.gatherer.precision, "runtime": classifier.runtime, "worker": worker,
                  "decode_ms": 0.0, "inference_ms": 0.0}
    if digest in known:
        entries, head = known[digest] if message.head else (known[digest], None)
        top = _labels(entries, classifier.spec)
        extra = {"head": _head_entry(runtime, message.head, head)} if message.head else {}
        return ok_record(message.job, image, path, top, **provenance, known=True, **extra)
    leader = computed[leaders[digest][0]]  # a copy of an image classified in this batch
    if leader.error is None:
        return ok_record(message.job, image, path, leader.top_k, **provenance, known=True, head=leader.head)
    return error_record(message.job, image, path, leader.error.code, leader.error.message, **provenance)
