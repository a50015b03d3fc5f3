"""Result records out as JSON lines, CSV or Parquet, written atomically when going to a file."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO

from imgq.contract import Label, ResultRecord, class_position
from imgq.labels import groups as wordnet_groups
from imgq.storage.files import atomic_path
from producer.exports.parquet import write_parquet

FORMATS = ("jsonl", "csv", "parquet")
FILE_FORMATS = ("parquet",)
# Binary formats, written to a path row group by row group (file_writer_for), never to standard output.


def labels_above(record: ResultRecord, min_score: float) -> tuple[Label, ...]:
    """The record's top-k labels whose score is at least ``min_score``, best first."""
    return tuple(t for t in record.top_k if t.score >= min_score)


def with_min_score(records: Iterable[ResultRecord], min_score: float | None) -> Iterator[ResultRecord]:
    """The records with the labels under ``min_score`` dropped from their top_k and their head's top_k
    (copies: the stored records keep their whole top-k). None or 0 passes them through as they are."""
    for record in records:
        if min_score and record.top_k:
            record = dataclasses.replace(record, top_k=labels_above(record, min_score))
        if min_score and record.head and "top_k" in record.head:
            kept = [t for t in record.head["top_k"] if t["score"] >= min_score]
            record = dataclasses.replace(record, head={**record.head, "top_k": kept})
        yield record


def head_best(record: ResultRecord) -> tuple[str, str, str]:
    """``(head name, best head label, its score)`` of a record, empty strings without a head's label."""
    head = record.head or {}
    top = head.get("top_k") or [{}]
    score = top[0].get("score")
    return head.get("name", ""), top[0].get("label", ""), "" if score is None else f"{score:.6g}"


Groups = float | None
# An export's groups: None leaves them out; a number adds to each record its WordNet groups (imgq/labels/groups.py)
# scoring at least that much, summed over its whole top-k, and drops its labels scoring less (--min-score
# applies to both). The writers then get the records unfiltered: a group's sum needs every label.


def with_groups(records: Iterable[ResultRecord], groups: float) -> Iterator[tuple[ResultRecord, list]]:
    """``(record with its labels under ``groups`` dropped, [(group, score), ...] best first)``."""
    for record in records:
        found = wordnet_groups.above(record.top_k, groups)
        yield next(with_min_score([record], groups)), found


def write_jsonl(records: Iterable[ResultRecord], out: IO[str], groups: Groups = None) -> int:
    """One record a line; with ``groups``, each record's ``"groups": [{"group": ..., "score": ...}, ...]``."""
    n = 0
    if groups is None:
        for record in records:
            out.write(json.dumps(record.to_dict(), allow_nan=False) + "\n")
            n += 1
        return n
    for record, found in with_groups(records, groups):
        data = record.to_dict()
        data["groups"] = [{"group": group, "score": score} for group, score in found]
        out.write(json.dumps(data, allow_nan=False) + "\n")
        n += 1
    return n


def csv_header(k: int) -> list[str]:
    labels = [f"label_{i}" for i in range(1, k + 1)]
    scores = [f"score_{i}" for i in range(1, k + 1)]
    wnids = [f"wnid_{i}" for i in range(1, k + 1)]
    indices = [f"index_{i}" for i in range(1, k + 1)]
    return ["job", "image", "path", "status", *labels, *scores, *wnids, "error_code", "error_message",
            "model", "weights", "precision", "worker", "decode_ms", "inference_ms", *indices, "head", "head_label",
            "head_score"]


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# What makes a CSV cell a formula to Excel, LibreOffice or Google Sheets (OWASP, "CSV Injection"): a label of
# a user's model, a file name ("-rf.jpg", "=HYPERLINK(...).jpg") or a worker's name may start so.


class Escaped(str):
    """A text cell escaped against formula injection (``text_cell``); the CSV writer always quotes it."""


def text_cell(value: str) -> str:
    """``value`` as a text cell of a CSV: one starting as a formula does (FORMULA_STARTS) gets a single quote
    before it, as OWASP advises, so that a spreadsheet shows it as text and never runs it, and is quoted
    (Escaped). A reader removes the leading quote to get the value back."""
    return Escaped("'" + value) if value.startswith(FORMULA_STARTS) else value


def csv_row(r: ResultRecord, k: int) -> list:
    """One record's cells: text cells through ``text_cell``; numbers (the image id, scores, times, class
    indices) as they are: imgq writes those, and a number is no formula."""
    top = r.top_k[:k]
    pad = [""] * (k - len(top))
    error = r.error
    head, head_label, head_score = head_best(r)
    return [text_cell(r.job), r.image, text_cell(r.path), r.status,
            *[text_cell(t.label) for t in top], *pad, *[f"{t.score:.6g}" for t in top], *pad,
            *[text_cell(t.wnid) for t in top], *pad,
            error.code if error else "", text_cell(error.message) if error else "",
            text_cell(r.model), text_cell(r.weights), text_cell(r.precision), text_cell(r.worker), r.decode_ms,
            r.inference_ms, *["" if (i := class_position(t)) is None else i for t in top], *pad,
            text_cell(head), text_cell(head_label), head_score]


class CsvWriter:
    """``csv.writer`` (its dialect: excel) that quotes every Escaped cell, which ``csv.writer`` would leave
    bare ("'=1+2" holds no comma); a row without one (nearly all) is csv.writer's own, at its speed."""

    def __init__(self, out: IO[str]):
        self._out, self._writer = out, csv.writer(out)

    def writerow(self, row: list) -> None:
        if Escaped not in map(type, row):
            self._writer.writerow(row)
            return
        self._out.write(",".join(_quoted(str(c)) if type(c) is Escaped else _minimal(c) for c in row) + "\r\n")


def _minimal(cell) -> str:
    """One cell as csv.writer's QUOTE_MINIMAL writes it in a row of several: None as nothing, a number as
    str() gives it, quoted when it holds a comma, a quote or a line break."""
    text = "" if cell is None else str(cell)
    return _quoted(text) if any(c in text for c in ',"\r\n') else text


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def write_csv(records: Iterable[ResultRecord], out: IO[str], k: int, groups: Groups = None) -> int:
    """One row per image with label_1..label_k, score_1..score_k (and wnid_1..wnid_k) columns, then
    index_1..index_k: each class's position in the model's outputs (a user's model's classes have no wnid);
    head, head_label and head_score give the best label of the job's head (empty without one); with
    ``groups``, two more: ``groups`` (names, best first, separated by ";") and ``group_scores`` (theirs, in
    that order). New columns go last, so that scripts reading columns by position keep working. Text cells
    that a spreadsheet would run as formulas are escaped (``text_cell``)."""
    writer = CsvWriter(out)
    writer.writerow(csv_header(k) + (["groups", "group_scores"] if groups is not None else []))
    n = 0
    if groups is None:
        for record in records:
            writer.writerow(csv_row(record, k))
            n += 1
        return n
    for record, found in with_groups(records, groups):
        writer.writerow([*csv_row(record, k), text_cell(";".join(g for g, _ in found)),
                         ";".join(f"{s:.6g}" for _, s in found)])
        n += 1
    return n


def writer_for(fmt: str, k: int, groups: Groups = None) -> Callable[[Iterable[ResultRecord], IO[str]], int]:
    """The writer of a text format: ``(records, out) -> records written`` (see Groups for ``groups``)."""
    if fmt == "csv":
        return lambda records, out: write_csv(records, out, k, groups)
    return lambda records, out: write_jsonl(records, out, groups)


def file_writer_for(fmt: str, k: int, groups: Groups = None) -> Callable[[Iterable[ResultRecord], str], int]:
    """The writer of a FILE_FORMATS format: ``(records, path) -> rows written``."""
    if groups is None:
        return lambda records, path: write_parquet(records, path, k)
    return lambda records, path: write_parquet(with_groups(records, groups), path, k, grouped=True)


@contextmanager
def output(path: str | None) -> Iterator[IO[str]]:
    """Standard output, or ``path`` written through ``atomic_path``. Either way a path that is not UTF-8 (a
    file name's bytes as os.fsdecode gives them) is written as its own bytes, not refused."""
    if path is None or path == "-":
        yield from _stdout_as_file_names_are()
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as file:
        yield file


def _stdout_as_file_names_are() -> Iterator[IO[str]]:
    """Standard output with errors="surrogateescape" (Python's own is strict under a UTF-8 locale), detached
    again afterwards so that closing the wrapper never closes standard output."""
    if not hasattr(sys.stdout, "buffer"):  # a stream replaced by a text-only one: it takes what it takes
        yield sys.stdout
        return
    sys.stdout.flush()
    stream = io.TextIOWrapper(sys.stdout.buffer, encoding=sys.stdout.encoding or "utf-8", errors="surrogateescape",
                              newline="", write_through=True)
    try:
        yield stream
    finally:
        stream.flush()
        stream.detach()
