"""Scores that are numbers: no record carries a NaN or an infinite score.

A model whose outputs are not finite for an image gets a ``model_output`` error record from the worker
(worker/batches/batch.py checks each image's row of outputs). Records that an earlier imgq stored with such
scores, as they came, read back the same way (imgq/results/packing.py, imgq/results/parquet_schema.py), and the
worker passes every record through here before storing it (an answer of the content-hash index stored by an
earlier imgq included). So no export holds a NaN: JSON has no such token (a report's ``JSON.parse`` throws on
one), and every record is serialised with ``allow_nan=False``, which raises rather than write one.
"""

from __future__ import annotations

import dataclasses
import math

from imgq.contract import Failure, ResultRecord

NOT_FINITE = "the model's outputs for this image are not finite numbers (NaN or infinite)"
HEAD_NOT_FINITE = "the head's scores for this image are not finite numbers (the model's features are not)"


def finite_record(record: ResultRecord) -> ResultRecord:
    """``record`` itself when every score in it is a finite number. Otherwise: for a label's score, its
    ``model_output`` error record (provenance and decode time kept; labels, head and dump entry dropped, as an
    error record has none); for a head's score only, the record with its head entry ``{"name", "error"}``."""
    if record.ok and not all(math.isfinite(label.score) for label in record.top_k):
        return dataclasses.replace(record, status="error", top_k=(), error=Failure("model_output", NOT_FINITE),
                                   head=None, activations=None, known=False)
    head = finite_head(record.head)
    return record if head is record.head else dataclasses.replace(record, head=head)


def finite_head(head: dict | None) -> dict | None:
    """A record's head entry, or ``{"name", "error"}`` when a score of it is not a finite number."""
    if not head or all(_finite(entry.get("score")) for entry in head.get("top_k") or ()):
        return head
    return {"name": head.get("name", ""), "error": HEAD_NOT_FINITE}


def _finite(score) -> bool:
    return isinstance(score, (int, float)) and math.isfinite(score)
