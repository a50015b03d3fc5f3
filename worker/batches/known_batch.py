"""A batch with the content-hash index (`imgq submit --skip-known` / `--force`): each distinct picture is
classified once, whatever its name, its job or its copies.

Per batch: hash every file; the first image of each digest leads, the others copy its result. Leaders
already in the index are answered from it ("skip"); the rest are claimed and classified, and their
results remembered. A leader claimed by another batch (a copy classified elsewhere right now) waits for
that result instead of computing it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from imgq.contract import BatchMessage, Label, ResultRecord, error_record, ok_record
from imgq.labels.classes import class_index, class_numbers
from imgq.labels.heads import HeadError
from imgq.models.spec import scoring_digest
from imgq.results.known import KnownImages, stream_digest
from imgq.storage.errors import ImageError
from imgq.storage.locate import source_for
from worker.batches.isolation import Isolation

log = logging.getLogger(__name__)

WAIT_FOR_OTHERS_SECONDS = 60.0


def classify_with_index(message: BatchMessage, todo: list[tuple[int, str]], runtime, worker: str,
                        classify: Callable[[list[tuple[int, str]]], list[ResultRecord]],
                        isolation: Isolation | None = None) -> list[ResultRecord]:
    """Records for ``todo``; ``classify(items)`` runs the ordinary path (decode, forward pass) on some.

    In isolation, files are hashed one at a time as suspects too (reading a file can kill a worker as well),
    and a file a worker died on is left unhashed: the ordinary path then records it ``worker_crashed``.
    """
    precision = runtime.gatherer.precision  # the index of this precision; a pass in another is not remembered
    index = KnownImages(runtime.store.raw, runtime.store.keys, runtime.gatherer.weights_id,
                        precision, message.top_k, model_id=runtime.model_id, head=message.head,
                        scoring=scoring_digest(runtime.classifier.spec, runtime.settings.jpeg_draft))
    digests = dict(zip(todo, _digests(todo, runtime, isolation), strict=True))
    leaders: dict[bytes, tuple[int, str]] = {}
    for item, digest in digests.items():
        if digest is not None:
            leaders.setdefault(digest, item)
    asked = index.ask(list(leaders), skip_known=message.known == "skip",
                      refresh_for=message.job if message.known == "refresh" else None)
    unhashed = [item for item, digest in digests.items() if digest is None]  # errors: the ordinary path says which
    computed = {r.image: r for r in classify([leaders[d] for d in leaders if d in asked.mine] + unhashed)}
    mine = {d: computed[leaders[d][0]] for d in asked.mine}
    answers = _answers({d: r for d, r in mine.items() if r.precision == precision}, _head_labels(message, runtime),
                       index.head)
    known = asked.known | index.tell(asked, answers, WAIT_FOR_OTHERS_SECONDS)
    late = [leaders[d] for d in asked.theirs if d not in known]  # their batch died or failed them: do it here
    computed |= {r.image: r for r in classify(late)}
    return [_record_for(message, item, digests[item], leaders, computed, known, runtime, worker) for item in todo]


def _digests(todo: list[tuple[int, str]], runtime, isolation: Isolation | None) -> list[bytes | None]:
    if isolation is None:
        return list(runtime.decode_pool.map(lambda item: _digest_shared(item[1], runtime), todo))
    return [None if isolation.crashed(image) else isolation.alone(image, lambda p=path: _digest(p, runtime))
            for image, path in todo]


def _digest_shared(path: str, runtime) -> bytes | None:
    with runtime.decode_lock.shared():
        return _digest(path, runtime)


def _digest(path: str, runtime) -> bytes | None:
    """The file's digest, read in chunks; None when it cannot be read or is over IMGQ_MAX_FILE_BYTES (the
    ordinary path then records why)."""
    settings = runtime.settings
    try:
        with source_for(path).open(path, settings.allowed_roots, settings.max_file_bytes) as file:
            return stream_digest(file, settings.max_file_bytes)
    except (ImageError, OSError):
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
