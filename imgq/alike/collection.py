"""A collection: the batch files of one or more jobs searched as one (`imgq similar`, `imgq duplicates`), read a
file at a time so that memory stays bounded by one batch, whatever the number of rows.

Rows are numbered in the order of the jobs given, then of their batch files, then within each file: the order in
which ``parts`` yields them and in which an index (imgq/alike/search.py) numbers its vectors. A collection's
``digest`` names that order and each file's version (size, modification time in nanoseconds, inode: a batch file is
written to a temporary name and renamed, so a rewrite changes them; an object's size and ETag, under an s3:// dump
root, as its listing gives them), without reading a local file's vectors: an index cached under it is rebuilt when
any file changes, appears or goes. An object's header (rows, image ids, model) is read by a GET of the whole object,
once: this machine remembers it under the object's version (imgq/alike/cache.py), so that a later search lists the
prefix and reads only what is new or replaced. Rows are read only from the versions the digest names: a file written
again after the collection was opened (listed and its headers read) is refused when its rows are read, so that an
index is never built from other bytes than those its name says.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from imgq.alike import cache
from imgq.alike.batchfile import MAX_BATCH_FILE_BYTES, BatchFileError, BatchVectors, batch_listing, load_batch
from imgq.alike.cache import Header
from imgq.storage.destination import StoreError
from imgq.storage.files import RefusedFile
from imgq.storage.locate import destination_for, is_local_folder


class CollectionError(Exception):
    """Jobs that cannot be searched as one: no embedding files, or embeddings of different models or weights,
    which never meet. One line for the user."""


@dataclass(frozen=True)
class Part:
    """One batch file of the collection: its ``job``, ``file``, number of ``rows``, the first row's number, the
    least and greatest image ids in it (``find`` reads only the files whose range holds an image) and the
    ``version`` of the file that was opened (see the module docstring): its rows are read only from that version."""

    job: str
    file: str
    rows: int
    start: int
    images: tuple[int, int] = (0, -1)
    version: str = ""


@dataclass(frozen=True)
class Collection:
    """The batch files of ``jobs`` under a dump root, all of one ``model`` and ``weights`` and ``features`` wide;
    ``state_dir``: imgq's local state folder (IMGQ_STATE_DIR), where the index of a collection in object storage
    is cached (imgq/alike/search.py ``index_folder``)."""

    root: str
    jobs: tuple[str, ...]
    parts: tuple[Part, ...]
    model: str
    weights: str
    features: int
    digest: str
    state_dir: str = ""

    def __len__(self) -> int:
        return self.parts[-1].start + self.parts[-1].rows if self.parts else 0

    def batches(self) -> Iterator[tuple[Part, BatchVectors]]:
        """Each part and its rows, read in row order, one file at a time."""
        for part in self.parts:
            yield part, _rows(part)

    def locate(self, rows: list[int]) -> list[tuple[str, int, str]]:
        """``(job, image, path)`` of each of ``rows`` (collection row numbers), reading only their files."""
        starts = [p.start for p in self.parts]
        read: dict[str, BatchVectors] = {}
        out = []
        for row in rows:
            part = self.parts[bisect.bisect_right(starts, row) - 1]
            if part.file not in read:
                read[part.file] = _rows(part)
            batch = read[part.file]
            offset = row - part.start
            out.append((part.job, int(batch.image[offset]),
                        bytes(batch.path[offset]).decode("utf-8", "replace")))
        return out

    def images(self) -> Iterator[tuple[Part, np.ndarray]]:
        """Each part and its image ids (int64), reading no vectors."""
        for part in self.parts:
            yield part, _member(part.file, "image")

    def superseded(self) -> np.ndarray:
        """The rows (sorted) whose path has a row in a later job too: a schedule's file that a later tick
        classified again (edited) is its newest picture only. Reads each file's paths, not its vectors."""
        last: dict[bytes, int] = {}
        stale = []
        for part in self.parts:
            for offset, path in enumerate(_member(part.file, "path").tolist()):
                if path in last:
                    stale.append(last[path])
                last[path] = part.start + offset
        return np.array(sorted(stale), dtype=np.int64)

    def find(self, job: str, image: int) -> tuple[int, np.ndarray] | None:
        """The row number and embedding of image ``image`` of ``job``; None when it has no row."""
        for part in self.parts:
            if part.job != job or not part.images[0] <= image <= part.images[1]:
                continue
            batch = _rows(part)
            found = np.nonzero(batch.image == image)[0]
            if len(found):
                return part.start + int(found[0]), batch.embedding[found[0]].astype(np.float32)
        return None


def open_collection(root: str, jobs: list[str], state_dir: str = "") -> Collection:
    """The collection of ``jobs``' batch files under ``root``, its index cached under ``state_dir`` when ``root``
    is in object storage (an s3:// prefix; a local root keeps it beside the files), where the headers of its batch
    objects are remembered too (imgq/alike/cache.py). Raises CollectionError for a job without files and for files
    of different models, weights or widths; BatchFileError for a file that cannot be read."""
    parts: list[Part] = []
    identity: tuple[str, str, int] | None = None
    first_job = ""
    digest = hashlib.blake2b(digest_size=16)
    for job in jobs:
        for file, header in _headers(root, job, state_dir):
            features = (header.model, header.weights, header.features)
            if identity is None:
                identity, first_job = features, job
            elif features != identity:
                raise CollectionError(
                    f"Embeddings of different models or weights never meet: job {first_job} has {identity[0]} "
                    f"with {identity[1]}, job {job} {header.model} with {header.weights}" +
                    (f" ({header.features} features, not {identity[2]})." if features[:2] == identity[:2] else "."))
            start = parts[-1].start + parts[-1].rows if parts else 0
            parts.append(Part(job, file, header.rows, start, header.images, header.version))
            digest.update(f"{job}/{os.path.basename(file)}:{header.version}\n".encode())
    assert identity is not None  # jobs is never empty
    digest.update(f"{identity}\n".encode())
    return Collection(root, tuple(jobs), tuple(parts), identity[0], identity[1], identity[2], digest.hexdigest(),
                      state_dir)


def _headers(root: str, job: str, state_dir: str) -> list[tuple[str, Header]]:
    """Each batch file of ``job`` and its header: from this machine's cache when the file is listed in the
    version it was read in (a collection in object storage), else read from the file (and then remembered)."""
    listed = batch_listing(root, job)
    if not listed:
        raise CollectionError(f"Job {job} has no embedding files under {os.path.join(root, job)}: submit it "
                              f"with --embeddings.")
    place = cache.folder(state_dir, root, job) if state_dir and not is_local_folder(root) else None
    known = cache.remembered(place) if place else {}
    found = []
    for file, version in listed:
        header = known.get(os.path.basename(file))
        if header is None or header.version != version:
            header = _header(file)  # in the version read, which a file written again since listed has changed
        found.append((file, header))
    now = {os.path.basename(file): header for file, header in found}
    if place and now != known:
        cache.remember(place, now)
    return found


def _rows(part: Part) -> BatchVectors:
    """The rows of ``part``'s file, when it is still the version the collection was opened with. A file written
    again since (a batch redelivered to a worker, an object replaced after it was listed) is refused in one line:
    the collection's digest names the versions opened, and nothing (an index cached under that digest above all)
    is made of bytes it does not name."""
    try:
        with _opened(part.file) as (handle, version):
            if version != part.version:
                raise BatchFileError(f"{part.file} was written again while the collection was searched: search "
                                     f"again.")
            return load_batch(handle, part.file)
    except BatchFileError:
        raise
    except StoreError as exc:  # the store refused or did not answer: nothing is known of the file
        raise BatchFileError(str(exc)) from None
    except (OSError, RefusedFile, ValueError) as exc:
        raise BatchFileError(f"{part.file}: not an imgq embedding file ({exc})") from None


def _member(file: str, name: str) -> np.ndarray:
    """One array of a batch file (``image``, ``path``) alone."""
    try:
        with _opened(file) as (handle, _), np.load(handle, allow_pickle=False) as data:
            return data[name]
    except BatchFileError:
        raise
    except (OSError, RefusedFile, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise BatchFileError(f"{file}: not an imgq embedding file ({exc})") from None


@contextlib.contextmanager
def _opened(file: str) -> Iterator[tuple[BinaryIO, str]]:
    """``file`` opened by its destination under imgq's file rules (no link followed, a regular file or an
    object, within MAX_BATCH_FILE_BYTES), and the version of what is read (``Destination.version``: a local
    file's size, modification time and inode; an object's size and ETag)."""
    destination = destination_for(file)
    with contextlib.ExitStack() as stack:
        try:
            handle = stack.enter_context(destination.open(file, MAX_BATCH_FILE_BYTES))
        except FileNotFoundError:
            raise BatchFileError(f"{file}: no such file") from None
        yield handle, destination.version(handle)


def _header(file: str) -> Header:
    """A batch file's header (rows, least and greatest image ids, model, weights, features and the version
    read), reading its small members and the embedding's .npy header only (a local file's zip member is read
    lazily; an object is one GET of the whole of it)."""
    try:
        with _opened(file) as (handle, version), np.load(handle, allow_pickle=False) as data:
            image = data["image"]
            rows = len(image)
            images = (int(image.min()), int(image.max())) if rows else (0, -1)
            model, weights = str(data["model"]), str(data["weights"])
            with data.zip.open("embedding.npy") as member:
                major, _ = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if major == 1
                               else np.lib.format.read_array_header_2_0)
                shape = read_header(member)[0]  # the header alone, not the vectors
    except BatchFileError:
        raise
    except (OSError, RefusedFile, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise BatchFileError(f"{file}: not an imgq embedding file ({exc})") from None
    if len(shape) != 2 or shape[0] != rows:
        raise BatchFileError(f"{file}: arrays of inconsistent shapes")
    return Header(rows, images, model, weights, int(shape[1]), version)
