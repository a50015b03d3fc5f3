"""Result records as Parquet columns, and back: one schema for `imgq results --format parquet` and the sink.

One row per image. The columns are the CSV export's (producer/exports/export.py), typed, plus ``runtime``, ``known``,
``path_bytes`` and ``activations``:

- ``job`` string, ``image`` int64, ``status`` dictionary-encoded string ("ok" or "error").
- ``path`` string: the path as UTF-8. A path that is not valid UTF-8 (Python holds it surrogate-escaped) has
  its undecodable bytes shown as U+FFFD here, and its exact bytes in ``path_bytes`` (binary, null for every
  path that is valid UTF-8): read ``path_bytes`` when it is not null, ``path`` otherwise.
- ``label_i``, ``wnid_i`` string, ``score_i`` float32, ``index_i`` int32 for i in 1..k, best first: null where
  the image has fewer than i labels (every rank of an error row). The worker's scores are float32
  probabilities, so float32 keeps them exactly. ``index_i`` is the class's position in the model's outputs
  (for an ImageNet model, the index of its wnid); ``wnid_i`` is null for a user's model, whose classes have
  none. Files written before ``index_i`` existed read back as ImageNet labels.
- ``error_code``, ``error_message`` string: null for an ``ok`` row.
- ``model``, ``weights``, ``precision``, ``runtime``, ``worker`` string; ``decode_ms``, ``inference_ms``
  float64; ``known`` bool.
- ``activations`` string: the record's activation dump description as JSON, null when it has none.
- ``head`` string: the record's head entry (a head's labels, imgq/labels/heads.py) as JSON, null without a head;
  files written before heads existed have no such column, and read as records without one.

pyarrow is imported inside the functions so that importing imgq (and `imgq --help`) stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from imgq.contract import Failure, Label, ResultRecord, class_position
from imgq.results.finite import finite_record

if TYPE_CHECKING:
    import pyarrow as pa

PROVENANCE = ("model", "weights", "precision", "runtime", "worker")


def schema(k: int) -> pa.Schema:
    """The columns of a table of records with ``k`` label ranks."""
    import pyarrow as pa

    ranks = range(1, k + 1)
    return pa.schema([
        ("job", pa.string()), ("image", pa.int64()), ("path", pa.string()), ("path_bytes", pa.binary()),
        ("status", pa.dictionary(pa.int8(), pa.string())),
        *[(f"label_{i}", pa.string()) for i in ranks], *[(f"score_{i}", pa.float32()) for i in ranks],
        *[(f"wnid_{i}", pa.string()) for i in ranks], *[(f"index_{i}", pa.int32()) for i in ranks],
        ("error_code", pa.string()), ("error_message", pa.string()),
        *[(name, pa.string()) for name in PROVENANCE],
        ("decode_ms", pa.float64()), ("inference_ms", pa.float64()), ("known", pa.bool_()),
        ("activations", pa.string()), ("head", pa.string()),
    ])


def record_batch(records: Iterable[ResultRecord], k: int) -> pa.RecordBatch:
    """``records`` as one batch of rows of ``schema(k)``; labels beyond rank ``k`` are left out."""
    import pyarrow as pa

    columns = _columns(records, k)
    return pa.RecordBatch.from_pydict(columns, schema=schema(k))


def _columns(records: Iterable[ResultRecord], k: int) -> dict[str, list]:
    target = schema(k)
    columns: dict[str, list[Any]] = {name: [] for name in target.names}
    label_cols = [(columns[f"label_{i}"], columns[f"score_{i}"], columns[f"wnid_{i}"], columns[f"index_{i}"])
                  for i in range(1, k + 1)]
    for r in records:
        columns["job"].append(r.job)
        columns["image"].append(r.image)
        text, exact = split_path(r.path)
        columns["path"].append(text)
        columns["path_bytes"].append(exact)
        columns["status"].append(r.status)
        for rank, (labels, scores, wnids, indices) in enumerate(label_cols):
            top = r.top_k[rank] if rank < len(r.top_k) else None
            labels.append(None if top is None else top.label)
            scores.append(None if top is None else top.score)
            wnids.append(None if top is None else top.wnid or None)
            indices.append(None if top is None else class_position(top))
        columns["error_code"].append(None if r.error is None else r.error.code)
        columns["error_message"].append(None if r.error is None else r.error.message)
        for name in PROVENANCE:
            columns[name].append(getattr(r, name))
        columns["decode_ms"].append(r.decode_ms)
        columns["inference_ms"].append(r.inference_ms)
        columns["known"].append(r.known)
        columns["activations"].append(_json(r.activations))
        columns["head"].append(_json(r.head))
    return columns


def _json(value: dict | None) -> str | None:
    """A JSON column's cell; never a bare NaN (ValueError instead)."""
    return None if value is None else json.dumps(value, allow_nan=False)


def _label(data: dict[str, list], row: int, rank: int) -> Label:
    wnid = data[f"wnid_{rank}"][row]
    if wnid:  # an ImageNet class: its wnid says which
        return Label(wnid, data[f"label_{rank}"][row], data[f"score_{rank}"][row])
    indices = data.get(f"index_{rank}")  # absent from files written before user models' labels
    return Label("", data[f"label_{rank}"][row], data[f"score_{rank}"][row], indices[row] if indices else None)


def split_path(path: str) -> tuple[str, bytes | None]:
    """``(UTF-8 text, exact bytes or None)`` of a path: the bytes only when the path is not valid UTF-8."""
    if path.isascii():
        return path, None
    try:
        path.encode("utf-8")
        return path, None
    except UnicodeEncodeError:  # surrogate-escaped bytes of a non-UTF-8 file name
        exact = path.encode("utf-8", "surrogateescape")
        return exact.decode("utf-8", "replace"), exact


def records(table: pa.Table | pa.RecordBatch) -> Iterator[ResultRecord]:
    """The rows of a table of ``schema(k)`` (any k) as records, in the table's order. A row an earlier
    worker wrote with a NaN or infinite score reads as its ``model_output`` error (imgq/results/finite.py)."""
    k = sum(1 for name in table.schema.names if name.startswith("label_"))
    data = {name: table.column(name).to_pylist() for name in table.schema.names}
    for row in range(table.num_rows):
        yield finite_record(_record(data, row, k))


def _record(data: dict[str, list], row: int, k: int) -> ResultRecord:
    exact = data["path_bytes"][row]
    path = data["path"][row] if exact is None else exact.decode("utf-8", "surrogateescape")
    top = tuple(_label(data, row, i) for i in range(1, k + 1) if data[f"label_{i}"][row] is not None)
    code = data["error_code"][row]
    activations = data["activations"][row]
    head = data["head"][row] if "head" in data else None
    return ResultRecord(job=data["job"][row], image=data["image"][row], path=path, status=data["status"][row],
                        top_k=top, error=None if code is None else Failure(code, data["error_message"][row]),
                        **{name: data[name][row] for name in PROVENANCE},
                        decode_ms=data["decode_ms"][row], inference_ms=data["inference_ms"][row],
                        known=data["known"][row],
                        activations=None if activations is None else json.loads(activations),
                        head=None if head is None else json.loads(head))
