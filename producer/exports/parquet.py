"""Result records out as one Parquet file (schema: imgq/results/parquet_schema.py), in bounded memory.

Rows are written one row group of ``row_group_rows`` at a time with ``pyarrow.parquet.ParquetWriter``, so
exporting a job of millions of images holds one row group in memory, never the job. Records become Arrow
columns CONVERT_ROWS at a time: a record as Python objects (a dataclass, its labels, their strings) takes
several times the memory of its Arrow row, so a row group is gathered as Arrow batches, not as records. The
file is written to a temporary name and renamed (imgq/storage/files.py).

With ``grouped`` (``imgq results --groups``), two columns follow the schema's: ``groups`` (list of strings, best
first) and ``group_scores`` (list of float64, in that order): each record's WordNet groups (imgq/labels/groups.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING

from imgq.results.parquet_schema import record_batch, schema
from imgq.storage.files import atomic_path

if TYPE_CHECKING:
    import pyarrow as pa

ROW_GROUP_ROWS = 65536
CONVERT_ROWS = 4096


def write_parquet(records: Iterable, path: str, k: int, row_group_rows: int = ROW_GROUP_ROWS,
                  grouped: bool = False) -> int:
    """Write ``records`` to ``path`` with ``k`` label ranks, one row per record; returns how many rows. With
    ``grouped``, ``records`` are ``(record, [(group, score), ...])`` pairs (producer.exports.export.with_groups)."""
    import pyarrow.parquet as pq

    iterator = iter(records)
    rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, _schema(k, grouped), compression="zstd") as writer:
        while (group := _row_group(iterator, k, row_group_rows, grouped)) is not None:
            writer.write_table(group, row_group_size=row_group_rows)
            rows += group.num_rows
    return rows


def _schema(k: int, grouped: bool) -> pa.Schema:
    import pyarrow as pa

    columns = schema(k)
    if grouped:
        columns = columns.append(pa.field("groups", pa.list_(pa.string())))
        columns = columns.append(pa.field("group_scores", pa.list_(pa.float64())))
    return columns


def _row_group(records: Iterator, k: int, rows: int, grouped: bool = False) -> pa.Table | None:
    """The next ``rows`` records (fewer at the end) as one table; None when there are none left."""
    import pyarrow as pa

    batches: list[pa.RecordBatch] = []
    gathered = 0
    target = _schema(k, grouped)
    while gathered < rows and (chunk := list(islice(records, min(CONVERT_ROWS, rows - gathered)))):
        if grouped:
            batch = record_batch([record for record, _ in chunk], k)
            names = pa.array([[g for g, _ in found] for _, found in chunk], pa.list_(pa.string()))
            scores = pa.array([[s for _, s in found] for _, found in chunk], pa.list_(pa.float64()))
            batch = pa.RecordBatch.from_arrays([*batch.columns, names, scores], schema=target)
        else:
            batch = record_batch(chunk, k)
        batches.append(batch)
        gathered += len(chunk)
    return pa.Table.from_batches(batches, schema=target) if batches else None
