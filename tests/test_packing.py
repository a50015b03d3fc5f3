"""imgq/results/packing.py: what the store keeps of a record reads back the same across imgq versions."""

from __future__ import annotations

import importlib
import json
import struct

import pytest

from imgq import contract
from imgq.contract import ERROR_CODES, error_record
from imgq.results import packing

PROVENANCE = json.dumps(["resnet50", "random:0", "fp32", "openvino", "w1@host"])


def stored_error(number: int, message: bytes = b"why") -> bytes:
    """An error record as imgq has stored it since records were packed (2026-12-01): ``E``, decode and
    inference centi-ms, the code's byte, the message."""
    return b"E" + struct.pack("<II", 250, 0) + bytes([number]) + message


def read(value: bytes):
    return packing.unpack(value, job="j", image=0, path="/a.jpg", provenance_json=PROVENANCE)


STORED_NUMBERS = {"missing": 0, "unreadable": 1, "not_an_image": 2, "corrupt": 3, "too_large": 4, "forbidden": 5,
                  "worker_crashed": 6, "dump_failed": 7, "internal": 8}


@pytest.mark.parametrize(("code", "number"), STORED_NUMBERS.items())
def test_records_stored_by_earlier_versions_read_with_their_code(code, number):
    record = read(stored_error(number))
    assert (record.error.code, record.error.message, record.decode_ms) == (code, "why", 2.5)
    packed = packing.pack(error_record("j", 0, "/a.jpg", code, "why", decode_ms=2.5, inference_ms=0.0))
    assert packed == stored_error(number)


def test_every_error_code_has_a_number_of_its_own():
    assert set(ERROR_CODES) <= set(packing.CODE_NUMBERS)
    assert len(set(packing.CODE_NUMBERS.values())) == len(packing.CODE_NUMBERS)
    assert all(0 <= n <= 255 for n in packing.CODE_NUMBERS.values())


@pytest.fixture
def a_new_code_first(monkeypatch):
    """ERROR_CODES as a later imgq may have it: a code added first (the numbers were positions in it)."""
    monkeypatch.setattr(contract, "ERROR_CODES", {"too_dark": "a new code", **ERROR_CODES})
    importlib.reload(packing)
    yield
    monkeypatch.undo()
    importlib.reload(packing)


def test_a_new_error_code_changes_no_stored_record(a_new_code_first):
    assert read(stored_error(8)).error.code == "internal"  # was read as dump_failed: numbers were positions
    assert read(stored_error(0)).error.code == "missing"
    assert packing.pack(error_record("j", 0, "/a.jpg", "internal", "why", decode_ms=2.5)) == stored_error(8)
    new = error_record("j", 0, "/a.jpg", "too_dark", "dark", decode_ms=2.5)
    back = read(packing.pack(new))  # a code without a number yet is kept whole
    assert (back.error, back.decode_ms, back.path) == (new.error, 2.5, "/a.jpg")


def test_a_number_from_a_newer_version_reads_as_internal_naming_it():
    record = read(stored_error(200, b"dark"))
    assert record.error.code == "internal"
    assert record.error.message == "error code 200 (from another imgq version): dark"
