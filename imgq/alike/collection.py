"""A collection: the batch files of one or more jobs searched as one (`imgq similar`, `imgq duplicates`), read a
file at a time so that memory stays bounded by one batch, whatever the number of rows.

Rows are numbered in the order of the jobs given, then of their batch files, then within each file: the order in
which ``parts`` yields them and in which an index (imgq/alike/search.py) numbers its vectors. A collection's
``digest`` names that order and each file's version (size, modification time in nanoseconds, inode: a batch file
is written to a temporary name and renamed, so a rewrite changes them; an object's size and bytes' digest, under
an s3:// dump root), without reading a local file's vectors: an index cached under it is rebuilt when any file
changes, appears or goes. Rows are read only from the versions the digest names: a file written again after the
collection was opened (listed and its headers read) is refused when its rows are read, so that an index is never
built from other bytes than those its name says.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from imgq.alike.batchfile import MAX_BATCH_FILE_BYTES, BatchFileError, BatchVectors, batch_files, load_batch
from imgq.storage.destination import StoreError
from imgq.storage.files import RefusedFile, open_regular
from imgq.storage.locate import destination_for


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
    is in object storage (an s3:// prefix; a local root keeps it beside the files). Raises CollectionError for a
    job without files and for files of different models, weights or widths; BatchFileError for a file that cannot
    be read."""
    parts: list[Part] = []
    identity: tuple[str, str, int] | None = None
    first_job = ""
    digest = hashlib.blake2b(digest_size=16)
    for job in jobs:
        files = batch_files(root, job)
        if not files:
            raise CollectionError(f"Job {job} has no embedding files under {os.path.join(root, job)}: submit it "
                                  f"with --embeddings.")
        for file in files:
            rows, images, model, weights, features, version = _header(file)
            if identity is None:
                identity, first_job = (model, weights, features), job
            elif (model, weights, features) != identity:
                raise CollectionError(
                    f"Embeddings of different models or weights never meet: job {first_job} has {identity[0]} "
                    f"with {identity[1]}, job {job} {model} with {weights}" +
                    (f" ({features} features, not {identity[2]})." if (model, weights) == identity[:2] else "."))
            start = parts[-1].start + parts[-1].rows if parts else 0
            parts.append(Part(job, file, rows, start, images, version))
            digest.update(f"{job}/{os.path.basename(file)}:{version}\n".encode())
    assert identity is not None  # jobs is never empty
    digest.update(f"{identity}\n".encode())
    return Collection(root, tuple(jobs), tuple(parts), identity[0], identity[1], identity[2], digest.hexdigest(),
                      state_dir)


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
    """``file`` opened under imgq's file rules, and its version: a local file's size, modification time and
    inode (read from the open file); an object's size and a digest of its bytes (an object store's open reads the
    object whole, within MAX_BATCH_FILE_BYTES: imgq/storage/s3_destination.py)."""
    if file.startswith("s3://"):
        try:
            with destination_for(file).open(file, MAX_BATCH_FILE_BYTES) as handle:
                data = handle.read()
        except FileNotFoundError:
            raise BatchFileError(f"{file}: no such file") from None
        yield io.BytesIO(data), f"{len(data)}:{hashlib.blake2b(data, digest_size=16).hexdigest()}"
        return
    local = open_regular(file, MAX_BATCH_FILE_BYTES)
    if local is None:
        raise BatchFileError(f"{file}: no such file")
    with local:
        info = os.fstat(local.fileno())
        yield local, f"{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"


def _header(file: str) -> tuple[int, tuple[int, int], str, str, int, str]:
    """A batch file's rows, least and greatest image ids, model, weights, features and version, reading its small
    members and the embedding's .npy header only (a zip member is read lazily)."""
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
    return rows, images, model, weights, int(shape[1]), version
