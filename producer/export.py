"""Result records out as JSON lines or CSV, written atomically when going to a file."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO

from imgq.files import atomic_path

FORMATS = ("jsonl", "csv")


def labels_above(record: dict, min_score: float) -> list[dict]:
    """The record's top-k entries whose score is at least ``min_score``, best first."""
    return [t for t in record.get("top_k") or [] if t["score"] >= min_score]


def with_min_score(records: Iterable[dict], min_score: float | None) -> Iterator[dict]:
    """The records with the labels under ``min_score`` dropped from their top_k (copies: the stored records
    keep their whole top-k). None or 0 passes them through as they are."""
    for record in records:
        if min_score and record.get("top_k"):
            record = {**record, "top_k": labels_above(record, min_score)}
        yield record


def write_jsonl(records: Iterable[dict], out: IO[str]) -> int:
    n = 0
    for record in records:
        out.write(json.dumps(record) + "\n")
        n += 1
    return n


def csv_header(k: int) -> list[str]:
    labels = [f"label_{i}" for i in range(1, k + 1)]
    scores = [f"score_{i}" for i in range(1, k + 1)]
    wnids = [f"wnid_{i}" for i in range(1, k + 1)]
    return ["job", "image", "path", "status", *labels, *scores, *wnids, "error_code", "error_message",
            "model", "weights", "precision", "worker", "decode_ms", "inference_ms"]


def csv_row(record: dict, k: int) -> list:
    top = record.get("top_k") or []
    pad = [""] * (k - len(top))
    error = record.get("error") or {}
    return [record["job"], record["image"], record["path"], record["status"],
            *[t["label"] for t in top[:k]], *pad, *[f"{t['score']:.6g}" for t in top[:k]], *pad,
            *[t["wnid"] for t in top[:k]], *pad, error.get("code", ""), error.get("message", ""),
            record.get("model", ""), record.get("weights", ""), record.get("precision", ""), record.get("worker", ""),
            record.get("decode_ms", ""), record.get("inference_ms", "")]


def write_csv(records: Iterable[dict], out: IO[str], k: int) -> int:
    """One row per image with label_1..label_k, score_1..score_k (and wnid_1..wnid_k) columns."""
    writer = csv.writer(out)
    writer.writerow(csv_header(k))
    n = 0
    for record in records:
        writer.writerow(csv_row(record, k))
        n += 1
    return n


def writer_for(fmt: str, k: int) -> Callable[[Iterable[dict], IO[str]], int]:
    if fmt == "csv":
        return lambda records, out: write_csv(records, out, k)
    return write_jsonl


@contextmanager
def output(path: str | None) -> Iterator[IO[str]]:
    """Standard output, or ``path`` written through ``atomic_path``."""
    if path is None or path == "-":
        yield sys.stdout
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as file:
        yield file
