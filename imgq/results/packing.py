"""How a result record is kept in Redis: the bytes that differ from image to image, and nothing else.

A record's provenance (model, weights, precision, runtime, worker) is the same for every image a worker
classifies in a job: the store keeps each distinct one once in the job's hash and the record holds its
number. Its path is in the job's batch list already. What is left is packed:

- ok:    ``O`` | decode centi-ms u32 | inference centi-ms u32 | flags u8 | k u8 | k x (class u16, score f32)
         | the activations entry as JSON, when the job dumps them (flags bit 1). The class is an ImageNet class
         number, or (flags bit 2) the index of a user's model's class, whose name the store keeps once per
         provenance in the job's hash (``classes``: index -> name, written with the records)
         | with a head (flags bit 3), a JSON object ``{"activations": ..., "head": ...}`` instead of the
           activations entry
- error: ``E`` | decode centi-ms u32 | inference centi-ms u32 | error code u8 | the message, UTF-8
- any other record (labels neither ImageNet classes nor indexed classes, a score that is not a float32, a time
  over 11 h):
  ``J`` | the record's fields as JSON, so that nothing is ever rounded or refused.

Scores are the model's float32 probabilities, so f32 keeps them exactly; times are recorded to 0.01 ms. A
5-label ok record packs to 30 bytes instead of ~600 of JSON: see docs/records.md for the bytes per image.
"""

from __future__ import annotations

import json
import struct

from imgq.contract import ERROR_CODES, Failure, Label, ResultRecord
from imgq.labels.classes import class_index, class_numbers
from imgq.results.finite import finite_record

_TIMES = struct.Struct("<II")
_LABEL = struct.Struct("<Hf")
CODE_NUMBERS = {"missing": 0, "unreadable": 1, "not_an_image": 2, "corrupt": 3, "too_large": 4, "forbidden": 5,
                "worker_crashed": 6, "dump_failed": 7, "internal": 8, "no_preview": 9, "model_output": 10}
# The byte an error record stores for its code. Records outlive versions (a week's retention, a Redis kept
# across an upgrade), so a code's number never changes and is never reused: a new code takes the next number,
# a code dropped from ERROR_CODES keeps its own. These are the positions the codes had in ERROR_CODES when
# records were first packed (2026-12-01), so every record stored since reads the same.
_CODES = {number: code for code, number in CODE_NUMBERS.items()}
_MAX_CENTI_MS = 2**32 - 1
FLAG_KNOWN, FLAG_ACTIVATIONS, FLAG_INDEXED, FLAG_HEAD = 1, 2, 4, 8

PROVENANCE_FIELDS = ("model", "weights", "precision", "runtime", "worker")


def provenance(record: ResultRecord) -> str:
    """The record's provenance as the store keeps it once per job: a JSON list in PROVENANCE_FIELDS' order."""
    return json.dumps([getattr(record, name) for name in PROVENANCE_FIELDS], allow_nan=False)


def pack(record: ResultRecord) -> bytes:
    """What the store keeps of ``record`` besides its provenance and path."""
    times = _centi(record.decode_ms), _centi(record.inference_ms)
    if None in times:
        return _as_json(record)
    head = _TIMES.pack(*times)
    if record.error is not None:
        number = CODE_NUMBERS.get(record.error.code)
        if number is None:  # a code without a number yet (see CODE_NUMBERS): kept whole rather than refused
            return _as_json(record)
        return b"E" + head + bytes([number]) + record.error.message.encode("utf-8", "surrogatepass")
    indexed = bool(record.top_k) and all(not t.wnid and t.index is not None for t in record.top_k)
    labels = _packed_indices(record.top_k) if indexed else _packed_labels(record.top_k)
    if labels is None:
        return _as_json(record)
    flags = ((FLAG_KNOWN if record.known else 0) | (FLAG_ACTIVATIONS if record.activations is not None else 0)
             | (FLAG_INDEXED if indexed else 0) | (FLAG_HEAD if record.head is not None else 0))
    if record.head is not None:
        tail = json.dumps({"activations": record.activations, "head": record.head}, allow_nan=False).encode()
    else:
        tail = json.dumps(record.activations, allow_nan=False).encode() if record.activations is not None else b""
    return b"O" + head + bytes([flags, len(record.top_k)]) + labels + tail


def classes(record: ResultRecord) -> dict[int, str]:
    """The class names ``pack`` leaves out of the record (a user's model's: index -> name), for the store to
    keep once per provenance."""
    return {t.index: t.label for t in record.top_k if not t.wnid and t.index is not None}


def unpack(value: bytes, *, job: str, image: int, path: str, provenance_json: str,
           names: dict[int, str] | None = None) -> ResultRecord:
    """The whole record again, from ``pack``'s bytes, its job, image id, path and provenance; ``names``: the
    class names of its provenance (``classes`` of its records). Raises KeyError for a class not in ``names``.
    A record an earlier imgq stored with a NaN or infinite score reads as its ``model_output`` error
    (imgq/results/finite.py): no reader is handed a score that is not a number."""
    facts = dict(zip(PROVENANCE_FIELDS, json.loads(provenance_json), strict=True))
    kind = value[:1]
    if kind == b"J":
        data = json.loads(value[1:])
        return finite_record(ResultRecord.from_dict({**facts, **data, "job": job, "image": image, "path": path}))
    decode, inference = (t / 100 for t in _TIMES.unpack_from(value, 1))
    common = {"job": job, "image": image, "path": path, "decode_ms": decode, "inference_ms": inference, **facts}
    if kind == b"E":
        message = value[10:].decode("utf-8", "surrogatepass")
        return ResultRecord(status="error", error=_failure(value[9], message), **common)
    flags, k = value[9], value[10]
    imagenet = class_index()
    labels = []
    for n in range(k):
        number, score = _LABEL.unpack_from(value, 11 + n * _LABEL.size)
        if flags & FLAG_INDEXED:
            labels.append(Label("", (names or {})[number], score, number))
        else:
            labels.append(Label(imagenet[number][0], imagenet[number][1], score))
    tail = value[11 + k * _LABEL.size:]
    extra = json.loads(tail) if flags & FLAG_HEAD else {"activations": json.loads(tail) if tail else None}
    return finite_record(ResultRecord(status="ok", top_k=tuple(labels), known=bool(flags & FLAG_KNOWN),
                                      activations=extra["activations"] if flags & FLAG_ACTIVATIONS else None,
                                      head=extra.get("head"), **common))


def _failure(number: int, message: str) -> Failure:
    """The error of a stored code number. A number this imgq does not know (written by a newer one) or a code
    it no longer has reads as ``internal`` with the stored code named, instead of failing every reader."""
    code = _CODES.get(number)
    if code in ERROR_CODES:
        return Failure(code, message)
    return Failure("internal", f"error code {code or number} (from another imgq version): {message}")


def _centi(ms: float) -> int | None:
    """``ms`` in hundredths, when that is exact to the 0.01 ms the worker records (None: keep it as JSON)."""
    centi = round(ms * 100)
    return centi if 0 <= centi <= _MAX_CENTI_MS and centi / 100 == ms else None


def _packed_labels(top_k: tuple[Label, ...]) -> bytes | None:
    """k x (class number, float32 score), or None when a label is not an ImageNet class as the vendored index
    names it, or a score is not exactly a float32."""
    numbers, names = class_numbers(), class_index()
    out = []
    for label in top_k:
        number = numbers.get(label.wnid)
        if number is None or names[number][1] != label.label or len(top_k) > 255:
            return None
        packed = _LABEL.pack(number, label.score)
        if _LABEL.unpack(packed)[1] != label.score:
            return None
        out.append(packed)
    return b"".join(out)


def _packed_indices(top_k: tuple[Label, ...]) -> bytes | None:
    """k x (class index, float32 score) of a user's model's labels; None when an index does not fit or a
    score is not exactly a float32."""
    out = []
    for label in top_k:
        index = label.index if label.index is not None else -1
        if not 0 <= index <= 0xFFFF or len(top_k) > 255:
            return None
        packed = _LABEL.pack(index, label.score)
        if _LABEL.unpack(packed)[1] != label.score:
            return None
        out.append(packed)
    return b"".join(out)


def as_json(record: ResultRecord) -> bytes:
    """``record`` packed as JSON, names and all: for records whose class names the store cannot keep apart."""
    return _as_json(record)


def _as_json(record: ResultRecord) -> bytes:
    data = record.to_dict()
    for name in ("job", "image", "path", *PROVENANCE_FIELDS):
        data.pop(name, None)
    return b"J" + json.dumps(data, allow_nan=False).encode()
