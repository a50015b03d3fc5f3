"""Per-batch embedding files: ``<dump root>/<job>/embeddings-<batch>.npz``, one per batch of a job asked with
``--embeddings``, written by the worker, read by `imgq duplicates`, `imgq similar` and `imgq results --embeddings`.

An uncompressed .npz of five arrays, one row per image classified in the batch, in submission order:

- ``image``: int64 (n,), the image ids;
- ``path``: bytes (n,) (numpy ``S``, UTF-8, padded to the batch's longest path);
- ``embedding``: float16 (n, features), the model's feature-layer vector L2-normalised (a zero vector stays 0);
- ``phash``: uint64 (n,), the 64-bit DCT perceptual hash of the decoded picture (imgq.alike.phash);
- ``content``: uint8 (n, 16), the content hash of the file's bytes (imgq.results.known.file_digest's blake2b);

and ``model`` and ``weights``: 0-d strings, the worker's model id and weights id: embeddings of different
models or weights are never compared.

The dump root is a local folder or an s3:// prefix (IMGQ_DUMP_ROOT): files are written and read back through its
Destination (imgq/storage/destination.py), whole or not at all, with the same layout of keys as of paths.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from imgq.contract import JOB_ID
from imgq.storage.destination import StoreError
from imgq.storage.locate import destination_for

FILE = re.compile(r"embeddings-(\d{6,})\.npz")
MAX_BATCH_FILE_BYTES = 1024**3  # 32 MB for a batch of 4,096 2048-d vectors; a file over this is refused
FIELDS = ("image", "path", "embedding", "phash", "content")


class BatchFileError(Exception):
    """A per-batch embedding file that cannot be read or is not what this module writes."""


@dataclass(frozen=True)
class BatchVectors:
    """The rows of one or more batch files (see the module docstring for each array)."""

    image: np.ndarray
    path: np.ndarray
    embedding: np.ndarray
    phash: np.ndarray
    content: np.ndarray
    model: str
    weights: str

    def __len__(self) -> int:
        return len(self.image)


def batch_file(root: str, job: str, batch: int) -> str:
    """Where batch ``batch`` of ``job`` keeps its rows; raises ValueError for a job that is not a job id."""
    if not JOB_ID.fullmatch(job):
        raise ValueError(f"Expected a job id of letters, digits, '_' or '-'. Received: {job!r}")
    return os.path.join(root, job, f"embeddings-{int(batch):06d}.npz")


def normalised(vectors: np.ndarray) -> np.ndarray:
    """Each row of ``vectors`` (n, d) over its L2 norm, as float16; a row of norm 0 (or not finite) stays 0."""
    values = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    good = np.isfinite(norms) & (norms > 0)
    out = np.divide(values, norms, out=np.zeros_like(values), where=good)
    return out.astype(np.float16)


def write_batch(root: str, job: str, batch: int, rows: BatchVectors) -> dict:
    """Write ``rows`` as the file of ``batch`` (atomically: a reader never sees half of it); returns
    ``{file, rows, bytes}``. Raises OSError (a full disk, permissions, a store that refused the write or did
    not answer: WriteError)."""
    path = batch_file(root, job, batch)
    destination = destination_for(path)
    arrays = {name: getattr(rows, name) for name in FIELDS}
    with destination.writing(path) as file:
        np.savez(file, **arrays, model=np.array(rows.model), weights=np.array(rows.weights))
        size = destination.size(file)
    return {"file": path, "rows": len(rows), "bytes": size}


def batch_files(root: str, job: str) -> list[str]:
    """The batch files of ``job`` under ``root``, in batch order ([] when there are none). Raises OSError when
    the folder cannot be listed (a store that refused or did not answer: StoreError)."""
    folder = os.path.dirname(batch_file(root, job, 0))
    names = destination_for(folder).names(folder)
    return [os.path.join(folder, name) for name in names if FILE.fullmatch(name)]


def batch_listing(root: str, job: str) -> list[tuple[str, str]]:
    """``batch_files``, each with its version as the listing gives it (Destination.listing: an object's size and
    ETag from the LIST pages, no request per file)."""
    folder = os.path.dirname(batch_file(root, job, 0))
    listed = destination_for(folder).listing(folder)
    return [(os.path.join(folder, name), version) for name, version in listed if FILE.fullmatch(name)]


def read_batch(path: str) -> BatchVectors:
    """The rows of one batch file, opened as imgq opens files (no link followed, a regular file, a size
    cap, never a blocking open; an object: its size checked before its body is read). Raises BatchFileError
    saying what is wrong."""
    try:
        with destination_for(path).open(path, MAX_BATCH_FILE_BYTES) as file:
            return load_batch(file, path)
    except FileNotFoundError:
        raise BatchFileError(f"{path}: no such file") from None
    except StoreError as exc:  # the store refused or did not answer: nothing is known of the file
        raise BatchFileError(str(exc)) from None
    except (OSError, ValueError) as exc:  # RefusedFile: ValueError
        raise BatchFileError(f"{path}: not an imgq embedding file ({exc})") from None


def load_batch(file: BinaryIO, path: str) -> BatchVectors:
    """The rows of the batch file ``path``, read from ``file`` (opened by the caller as ``read_batch`` opens
    it). Raises BatchFileError saying what is wrong."""
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {name: data[name] for name in FIELDS}
            model, weights = str(data["model"]), str(data["weights"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise BatchFileError(f"{path}: not an imgq embedding file ({exc})") from None
    rows = BatchVectors(**arrays, model=model, weights=weights)
    _check(rows, path)
    return rows


def _check(rows: BatchVectors, path: str) -> None:
    n = len(rows.image)
    if (rows.embedding.ndim != 2 or len(rows.embedding) != n or rows.phash.shape != (n,)
            or rows.content.shape != (n, 16) or rows.path.shape != (n,)):
        raise BatchFileError(f"{path}: arrays of inconsistent shapes")


def iter_batches(root: str, job: str) -> Iterator[BatchVectors]:
    """Each batch file of ``job``, read in batch order."""
    for path in batch_files(root, job):
        yield read_batch(path)


def read_job(root: str, job: str) -> BatchVectors | None:
    """Every row of ``job``'s batch files, concatenated in image order; None when it has none. Raises
    BatchFileError when two files disagree on the model, the weights or the number of features."""
    parts = list(iter_batches(root, job))
    if not parts:
        return None
    first = parts[0]
    for part in parts[1:]:
        if (part.model, part.weights, part.embedding.shape[1]) != (first.model, first.weights,
                                                                    first.embedding.shape[1]):
            raise BatchFileError(f"Job {job}'s embedding files come from different models or weights")
    order = np.argsort(np.concatenate([p.image for p in parts]), kind="stable")
    joined = {name: np.concatenate([getattr(p, name) for p in parts])[order] for name in FIELDS
              if name != "path"}
    paths = np.array([path.decode("utf-8", "replace") for p in parts for path in p.path.tolist()], dtype=object)[order]
    return BatchVectors(**joined, path=paths, model=first.model, weights=first.weights)
