"""Result records out as one Parquet file (schema: imgq/parquet_schema.py), in bounded memory.

Rows are written one row group of ``row_group_rows`` at a time with ``pyarrow.parquet.ParquetWriter``, so
exporting a job of millions of images holds one row group in memory, never the job. Records become Arrow
columns CONVERT_ROWS at a time: a record as Python objects (a dataclass, its labels, their strings) takes
several times the memory of its Arrow row, so a row group is gathered as Arrow batches, not as records. The
file is written to a temporary name and renamed (imgq/files.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING

from imgq.contract import ResultRecord
from imgq.files import atomic_path
from imgq.parquet_schema import record_batch, schema

if TYPE_CHECKING:
    import pyarrow as pa

ROW_GROUP_ROWS = 65536
CONVERT_ROWS = 4096


def write_parquet(records: Iterable[ResultRecord], path: str, k: int, row_group_rows: int = ROW_GROUP_ROWS) -> int:
    """Write ``records`` to ``path`` with ``k`` label ranks, one row per record; returns how many rows."""
    import pyarrow.parquet as pq

    iterator = iter(records)
    rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema(k), compression="zstd") as writer:
        while (group := _row_group(iterator, k, row_group_rows)) is not None:
            writer.write_table(group, row_group_size=row_group_rows)
            rows += group.num_rows
    return rows


def _row_group(records: Iterator[ResultRecord], k: int, rows: int) -> pa.Table | None:
    """The next ``rows`` records (fewer at the end) as one table; None when there are none left."""
    import pyarrow as pa

    batches: list[pa.RecordBatch] = []
    gathered = 0
    while gathered < rows and (chunk := list(islice(records, min(CONVERT_ROWS, rows - gathered)))):
        batches.append(record_batch(chunk, k))
        gathered += len(chunk)
    return pa.Table.from_batches(batches, schema=schema(k)) if batches else None
