"""Result records out as JSON lines, CSV or Parquet, written atomically when going to a file."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO

from imgq.contract import Label, ResultRecord, class_position
from imgq.files import atomic_path
from producer.parquet import write_parquet

FORMATS = ("jsonl", "csv", "parquet")
FILE_FORMATS = ("parquet",)
# Binary formats, written to a path row group by row group (file_writer_for), never to standard output.


def labels_above(record: ResultRecord, min_score: float) -> tuple[Label, ...]:
    """The record's top-k labels whose score is at least ``min_score``, best first."""
    return tuple(t for t in record.top_k if t.score >= min_score)


def with_min_score(records: Iterable[ResultRecord], min_score: float | None) -> Iterator[ResultRecord]:
    """The records with the labels under ``min_score`` dropped from their top_k (copies: the stored records
    keep their whole top-k). None or 0 passes them through as they are."""
    for record in records:
        if min_score and record.top_k:
            record = dataclasses.replace(record, top_k=labels_above(record, min_score))
        yield record


def write_jsonl(records: Iterable[ResultRecord], out: IO[str]) -> int:
    n = 0
    for record in records:
        out.write(json.dumps(record.to_dict()) + "\n")
        n += 1
    return n


def csv_header(k: int) -> list[str]:
    labels = [f"label_{i}" for i in range(1, k + 1)]
    scores = [f"score_{i}" for i in range(1, k + 1)]
    wnids = [f"wnid_{i}" for i in range(1, k + 1)]
    indices = [f"index_{i}" for i in range(1, k + 1)]
    return ["job", "image", "path", "status", *labels, *scores, *wnids, "error_code", "error_message",
            "model", "weights", "precision", "worker", "decode_ms", "inference_ms", *indices]


def csv_row(r: ResultRecord, k: int) -> list:
    top = r.top_k[:k]
    pad = [""] * (k - len(top))
    error = r.error
    return [r.job, r.image, r.path, r.status,
            *[t.label for t in top], *pad, *[f"{t.score:.6g}" for t in top], *pad, *[t.wnid for t in top], *pad,
            error.code if error else "", error.message if error else "",
            r.model, r.weights, r.precision, r.worker, r.decode_ms, r.inference_ms,
            *["" if (i := class_position(t)) is None else i for t in top], *pad]


def write_csv(records: Iterable[ResultRecord], out: IO[str], k: int) -> int:
    """One row per image with label_1..label_k, score_1..score_k (and wnid_1..wnid_k) columns, and last
    index_1..index_k: each class's position in the model's outputs (a user's model's classes have no wnid).
    New columns go last, so that scripts reading columns by position keep working."""
    writer = csv.writer(out)
    writer.writerow(csv_header(k))
    n = 0
    for record in records:
        writer.writerow(csv_row(record, k))
        n += 1
    return n


def writer_for(fmt: str, k: int) -> Callable[[Iterable[ResultRecord], IO[str]], int]:
    if fmt == "csv":
        return lambda records, out: write_csv(records, out, k)
    return write_jsonl


def file_writer_for(fmt: str, k: int) -> Callable[[Iterable[ResultRecord], str], int]:
    """The writer of a FILE_FORMATS format: ``(records, path) -> rows written``."""
    return lambda records, path: write_parquet(records, path, k)


@contextmanager
def output(path: str | None) -> Iterator[IO[str]]:
    """Standard output, or ``path`` written through ``atomic_path``."""
    if path is None or path == "-":
        yield sys.stdout
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as file:
        yield file
