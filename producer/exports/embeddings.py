"""`imgq results JOB --embeddings out.npy`: a job's feature-layer dumps as one ``(rows, features)`` array.

The feature layer is the pooled layer before the classifier, whatever its name in the job's model (ResNet50's
``avg_pool``, its 2048-d vector; imgq.models.spec.BUILTIN and a model folder's manifest name it): the vector the
classifier reads, an image embedding. Rows are in
submission order and keep the dumps' dtype (float16 unless the job asked for float32). An image without an
avg_pool dump (an error record, a job that dumped other layers, a dump deleted since) has no row, so that
every row is a real embedding; the index file says which image each row is and which images have none.

The index, ``out.index.jsonl`` beside ``out.npy``: one JSON object per image with a record, in submission
order, ``{"row": 0, "image": 0, "path": "/photos/a.jpg"}``, or ``{"row": null, "image": 3, "path": ...,
"missing": "corrupt"}`` (an error code, ``no_dump``, ``layer_not_dumped`` or ``file_not_found``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from imgq.contract import ResultRecord
from imgq.storage.files import atomic_path
from producer.exports.dumps import DumpError, dump_file, dumped_layers, load_layer

EMBEDDING_LAYER = "avg_pool"


class NoEmbeddings(DumpError):
    """A job none of whose images has a dump of its model's feature layer."""


@dataclass(frozen=True)
class Embeddings:
    """What was written: the array file, its index, and how many images have a row or none."""

    path: str
    index: str
    rows: int
    missing: int
    dtype: str


def index_path(out: str) -> str:
    """The index file of the embeddings file ``out``: ``x.npy`` -> ``x.index.jsonl``."""
    return (out[:-4] if out.endswith(".npy") else out) + ".index.jsonl"


def write_embeddings(records: Iterable[ResultRecord], out: str, dump_root: str,
                     layer: str = EMBEDDING_LAYER) -> Embeddings:
    """Gather the ``layer`` dumps of ``records`` (in submission order; ``layer``: the feature layer of the
    job's model) into ``out`` and its index.

    Both files are written to temporary names and renamed into place, the index last. Raises NoEmbeddings
    when no record has a dump of ``layer``, DumpError when a dump cannot be read.
    """
    index = index_path(out)
    files: list[str] = []
    missing = 0
    with atomic_path(index) as tmp_index, open(tmp_index, "w", encoding="utf-8") as lines:
        for entry, file in _index_entries(records, dump_root, files, layer):
            lines.write(json.dumps(entry, allow_nan=False) + "\n")
            if file:
                files.append(file)
            else:
                missing += 1
        if not files:
            raise NoEmbeddings(f"No image of the job has a dump of {layer} (its model's feature layer): submit "
                               f"with --activations {layer} to get embeddings.")
        dtype = _write_rows(files, out, layer)
    return Embeddings(out, index, len(files), missing, dtype)


def _index_entries(records: Iterable[ResultRecord], dump_root: str, files: list[str],
                   layer: str) -> Iterator[tuple[dict, str | None]]:
    """``(index entry, dump file or None)`` per record; rows are numbered by ``files`` as it grows."""
    for record in records:
        file = dump_file(record, dump_root) if layer in dumped_layers(record) else None
        entry = {"row": len(files) if file else None, "image": record.image, "path": record.path}
        if file is None:
            entry["missing"] = _why_missing(record, layer)
        yield entry, file


def _why_missing(record: ResultRecord, layer: str) -> str:
    if record.error is not None:
        return record.error.code
    if not record.activations:
        return "no_dump"
    if layer not in dumped_layers(record):
        return "layer_not_dumped"
    return "file_not_found"


def _write_rows(files: list[str], out: str, layer: str) -> str:
    """Write the ``layer`` vector of each dump as one row of a .npy at ``out``; returns its dtype.

    Rows go straight into a memory-mapped .npy, so a job of a million images never needs its embeddings in
    memory at once.
    """
    first = load_layer(files[0], layer)
    with atomic_path(out) as tmp:
        rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=(len(files), *first.shape))
        for row, file in enumerate(files):
            vector = first if row == 0 else load_layer(file, layer)
            if vector.shape != first.shape:
                raise DumpError(f"Expected {layer} of shape {first.shape} in {file}. "
                                f"Received: {vector.shape}")
            rows[row] = vector
        rows.flush()
        del rows  # the memory map must be closed before the file is renamed
    return str(first.dtype)



def write_batch_embeddings(records: Iterable[ResultRecord], out: str, dump_root: str, job: str) -> Embeddings:
    """Gather the per-batch embedding files of a job submitted with ``--embeddings`` (imgq/alike/batchfile.py)
    into ``out`` and its index, as ``write_embeddings`` does with dumps: rows in submission order, float16 and
    L2-normalised as the files keep them; an image without a row has ``missing``: its error code or
    ``no_embedding``. One batch file in memory at a time. Raises NoEmbeddings when the job has no batch file,
    DumpError when one cannot be read."""
    from imgq.alike.batchfile import BatchFileError, batch_files, read_batch

    files = batch_files(dump_root, job)
    if not files:
        raise NoEmbeddings(f"Job {job} has neither dumps of its feature layer nor embedding files: submit with "
                           f"--embeddings (or --activations with its feature layer).")
    try:
        where = {int(image): number for number, file in enumerate(files) for image in read_batch(file).image}
        index = index_path(out)
        rows: dict[int, int] = {}
        missing = 0
        with atomic_path(index) as tmp_index, open(tmp_index, "w", encoding="utf-8") as lines:
            for record in records:
                entry = {"row": None, "image": record.image, "path": record.path}
                if record.image in where and record.image not in rows:
                    entry["row"] = rows[record.image] = len(rows)
                else:
                    entry["missing"] = record.error.code if record.error is not None else "no_embedding"
                    missing += 1
                lines.write(json.dumps(entry, allow_nan=False) + "\n")
            if not rows:
                raise NoEmbeddings(f"No image of job {job} with a record has a row in its embedding files.")
            _write_batch_rows(files, rows, out)
    except BatchFileError as exc:
        raise DumpError(str(exc)) from None
    return Embeddings(out, index, len(rows), missing, "float16")


def _write_batch_rows(files: list[str], rows: dict[int, int], out: str) -> None:
    """Each batch file's vectors into their ``rows`` (image -> row) of a memory-mapped .npy at ``out``."""
    from imgq.alike.batchfile import read_batch

    array = None
    with atomic_path(out) as tmp:
        for file in files:
            batch = read_batch(file)
            if array is None:
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                                  shape=(len(rows), batch.embedding.shape[1]))
            elif batch.embedding.shape[1] != array.shape[1]:
                raise DumpError(f"Expected vectors of {array.shape[1]} features in {file}. "
                                f"Received: {batch.embedding.shape[1]}")
            for image, vector in zip(batch.image.tolist(), batch.embedding, strict=True):
                if image in rows:
                    array[rows[image]] = vector
        if array is not None:
            array.flush()
        del array  # the memory map must be closed before the file is renamed
