"""The model and weights files Keras loads: each read once, hashed as it is copied into a folder of this
process's own, and loaded from that copy.

Hashing a file, then handing Keras its path, reads it twice: a file replaced in between (a deploy copying a new
model.keras over the old one while a worker starts) would be served, and its OpenVINO conversion cached, under
the digest of the bytes read first. Here the bytes hashed are the bytes loaded: the copy is written into a
folder only this process's user can enter (``tempfile.mkdtemp``: mode 0700, a name nobody can guess), under
the original's name (Keras picks its reader by the name's suffix), and removed once Keras has read it. Keras
3's ``load_model`` takes a path, not a file object (its zip reader does, but privately), and a legacy ``.h5``
or a weights file is read by h5py from a path too: a copy serves every kind alike.

The cost: a copy of the file in the temporary folder (``TMPDIR``) while the model loads, written at disk speed
as it is hashed.

The files are opened under the rules of every file imgq opens on a user's behalf: a folder model's file with
imgq/models/folder.py ``open_in_folder`` (no link out of the folder, a regular file, a size cap, no blocking
open); a weights file the operator names with imgq/storage/files.py ``open_regular`` (the same, a link to it
followed: the operator chose the path). Problems are ModelError, one line naming the file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from imgq.models.folder import MAX_MODEL_BYTES, open_in_folder
from imgq.models.spec import ModelError, ModelSpec
from imgq.storage.files import RefusedFile, open_regular

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Pinned:
    """A private copy of a file: ``path`` (named as the original) and ``sha256`` (hex) of its bytes."""

    path: str
    sha256: str


@contextmanager
def pinned(file: BinaryIO, name: str, limit: int = MAX_MODEL_BYTES) -> Iterator[Pinned]:
    """A private copy of what ``file`` holds from where it stands, named as ``name`` is, hashed as it is
    written; removed after the block. Raises ModelError when more than ``limit`` bytes come (a file that
    grew past its cap after its size was checked), OSError when the copy cannot be written."""
    folder = tempfile.mkdtemp(prefix="imgq-load-")
    try:
        path = os.path.join(folder, os.path.basename(name))
        digest = hashlib.sha256()
        copied = 0
        with open(path, "xb") as copy:
            while chunk := file.read(CHUNK_BYTES):
                copied += len(chunk)
                if copied > limit:
                    raise ModelError(f"{name}: more than the {limit} bytes imgq reads for it.")
                digest.update(chunk)
                copy.write(chunk)
        yield Pinned(path, digest.hexdigest())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def pinned_model_file(spec: ModelSpec) -> Iterator[Pinned]:
    """A private copy of ``spec``'s model file (a folder model's), once its bytes are shown to be those
    ``spec.file_digest`` was made of. Raises ModelError when they are not: the file was replaced since the
    folder was read, and the model it holds now must not be served, nor converted, under the old digest."""
    folder, name, path = spec.folder, spec.model_file, spec.model_path
    if folder is None or name is None or path is None:
        raise ValueError(f"{spec.name} is a built-in model: it has no model file")
    with open_in_folder(folder, name, MAX_MODEL_BYTES) as file, pinned(file, path) as copy:
        if copy.sha256[:12] != spec.file_digest:
            raise ModelError(f"{path}: changed since this worker read it (sha256 {copy.sha256[:12]}, read as "
                             f"{spec.file_digest}); start the worker again to serve the new file.")
        yield copy


@contextmanager
def pinned_weights_file(path: str) -> Iterator[Pinned]:
    """A private copy of the weights file at ``path``. Raises ModelError (missing, not a regular file, too
    large, unreadable)."""
    with open_weights_file(path) as file, pinned(file, path) as copy:
        yield copy


def open_weights_file(path: str) -> BinaryIO:
    """The weights file at ``path``, opened under imgq/storage/files.py's rules. Raises ModelError."""
    try:
        file = open_regular(path, MAX_MODEL_BYTES, follow_links=True)
    except (RefusedFile, OSError) as exc:
        raise ModelError(f"Weights file {path}: cannot be read ({exc}).") from None
    if file is None:
        raise ModelError(f"Weights file not found: {path}")
    return file
