"""Walk paths lazily, choose images, cut them into batches and queue them as one job.

A submission stages its batch messages in Redis first and makes the job visible only when the walk has
finished, so an empty selection, a missing path or a failure half-way leaves no job behind. Then the
staged batches are published to the Celery queue (imgq.queue).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import count, islice

from imgq.contract import BatchMessage
from imgq.queue import publish
from imgq.settings import Settings
from imgq.store import ResultStore

DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
# Chosen by name when walking folders; the worker decides by content (a PNG named .jpg works).

STAGE_BATCHES = 500  # batch messages per Redis round trip while staging


class EmptySelection(ValueError):
    """The paths and filters given select no image."""


@dataclass(frozen=True)
class Selection:
    """What to take from the paths given: folders walked (recursively or not), files by glob or extension.

    Explicitly named files are always taken; ``includes`` and the extensions choose files found in folders.
    """

    recursive: bool = True
    includes: tuple[str, ...] = ()

    def wants(self, name: str) -> bool:
        if self.includes:
            return any(fnmatch.fnmatch(name, pattern) for pattern in self.includes)
        return name.rpartition(".")[2].lower() in DEFAULT_EXTENSIONS


def iter_images(paths: Iterable[str], selection: Selection) -> Iterator[str]:
    """Absolute, normalised image paths under ``paths``, each once, without holding a folder in memory.

    Hidden files and folders (name starting with ".") are skipped inside folders. Duplicates are dropped
    by a 12-byte digest of the path, ~70 bytes of memory per image.
    """
    seen: set[bytes] = set()
    for path in paths:
        for found in _expand(os.path.abspath(path), selection):
            digest = hashlib.blake2b(os.fsencode(found), digest_size=12).digest()
            if digest not in seen:
                seen.add(digest)
                yield found


def _expand(path: str, selection: Selection) -> Iterator[str]:
    if os.path.isdir(path):
        yield from _walk(path, selection)
    else:
        yield path  # a named file is taken as it is; the worker reports it if it is not an image


def _walk(folder: str, selection: Selection) -> Iterator[str]:
    try:
        entries = os.scandir(folder)
    except OSError:
        return  # unreadable sub-folder: nothing to take from it
    subfolders = []
    with entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                if selection.recursive:
                    subfolders.append(entry.path)
            elif selection.wants(entry.name):
                yield entry.path
    for sub in subfolders:
        yield from _walk(sub, selection)


def read_path_list(lines: Iterable[str]) -> Iterator[str]:
    """Paths from a list file, one per line; blank lines and lines starting with # are skipped."""
    for line in lines:
        line = line.rstrip("\n")
        if line.strip() and not line.lstrip().startswith("#"):
            yield line


def batches(images: Iterable[str], job: str, batch_size: int, top_k: int, activations: tuple[str, ...] = (),
            activations_dtype: str = "float16", known: str = "") -> Iterator[BatchMessage]:
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
                           activations_dtype=activations_dtype, known=known)


@dataclass(frozen=True)
class Submitted:
    job: str
    total: int
    batches: int


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def submit(images: Iterable[str], *, settings: Settings, store: ResultStore, name: str = "",
           top_k: int | None = None, batch_size: int | None = None, params: dict | None = None,
           activations: tuple[str, ...] = (), activations_dtype: str = "float16", known: str = "",
           limit_check: Callable[[int], None] | None = None) -> Submitted:
    """Queue ``images`` as one job. Raises EmptySelection, or redis/kombu errors when Redis is down.

    ``activations``: layer names (checked with imgq.layers.check_layers) to dump for every image.
    ``known``: "skip" or "refresh" to use the content-hash index (imgq/known.py), "" to leave it alone.
    ``limit_check``: called with the number of images once the walk is done, before the job is committed;
    whatever it raises aborts the submission with nothing queued (e.g. producer.dumps.size_guard).
    """
    top_k = top_k or settings.top_k
    batch_size = batch_size or settings.batch_size
    job = new_job_id()
    total = n_batches = 0
    pending: list[dict] = []
    for message in batches(images, job, batch_size, top_k, activations, activations_dtype, known):
        pending.append(message.to_dict())
        total += len(message.images)
        n_batches += 1
        if len(pending) >= STAGE_BATCHES:
            store.stage_batches(job, pending)
            pending = []
    if pending:
        store.stage_batches(job, pending)
    if total == 0:
        raise EmptySelection("No images selected: check the paths, --include and --recursive.")
    if limit_check is not None:
        try:
            limit_check(total)
        except BaseException:
            store.redis.delete(store.keys.batches(job))  # the staged batches would otherwise wait a day
            raise
    store.commit_job(job, name=name or job, total=total, batches=n_batches,
                     params={"top_k": top_k, "batch_size": batch_size, **(params or {}),
                             **({"activations": list(activations), "activations_dtype": activations_dtype}
                                if activations else {}), **({"known": known} if known else {})})
    publish(store.iter_batches(job), settings)
    return Submitted(job, total, n_batches)
