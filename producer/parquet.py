"""Result records out as one Parquet file (schema: imgq/parquet_schema.py), in bounded memory.

Rows are gathered ``row_group_rows`` at a time and written as one row group each with
``pyarrow.parquet.ParquetWriter``, so exporting a job of millions of images holds one row group in memory,
never the job. The file is written to a temporary name and renamed (imgq/files.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

from imgq.contract import ResultRecord
from imgq.files import atomic_path
from imgq.parquet_schema import record_batch, schema

ROW_GROUP_ROWS = 65536


def write_parquet(records: Iterable[ResultRecord], path: str, k: int, row_group_rows: int = ROW_GROUP_ROWS) -> int:
    """Write ``records`` to ``path`` with ``k`` label ranks, one row per record; returns how many rows."""
    import pyarrow.parquet as pq

    iterator = iter(records)
    rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema(k), compression="zstd") as writer:
        while chunk := list(islice(iterator, row_group_rows)):
            writer.write_batch(record_batch(chunk, k), row_group_size=row_group_rows)
            rows += len(chunk)
    return rows
