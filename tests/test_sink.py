"""The Parquet sink (imgq/sink.py): one file per batch, replaced on redelivery, temporary files never read."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from imgq import sink
from imgq.contract import error_record, ok_record

JOB = "job1"


def top(score: float) -> list[dict]:
    return [{"wnid": "n01440764", "label": "tench", "score": float(np.float32(score))},
            {"wnid": "n01443537", "label": "goldfish", "score": float(np.float32(1 - score))}]


def batch_records(batch: int, size: int = 4, weights: str = "random:0"):
    first = batch * size
    return [ok_record(JOB, i, f"/photos/{i}.jpg", top(0.75), weights=weights, worker="w1@host", decode_ms=2.5)
            if i % 3 else error_record(JOB, i, f"/photos/caf\udce9-{i}.jpg", "corrupt", "truncated", weights=weights)
            for i in range(first, first + size)]


def test_batch_files_are_named_after_the_job_and_the_batch(tmp_path):
    assert sink.batch_file(str(tmp_path), JOB, 7) == str(tmp_path / JOB / "batch-000007.parquet")
    with pytest.raises(ValueError):
        sink.batch_file(str(tmp_path), "../elsewhere", 0)


def test_write_then_read_back_equal_records_in_submission_order(tmp_path):
    written = []
    for batch in (2, 0, 1):  # batches finish in any order
        written.append(sink.write_batch(str(tmp_path), JOB, batch, list(reversed(batch_records(batch))), k=2))
    assert written[0] == sink.batch_file(str(tmp_path), JOB, 2)
    expected = [r for batch in (0, 1, 2) for r in batch_records(batch)]
    assert list(sink.read_job(str(tmp_path), JOB)) == expected
    assert sink.count_rows(str(tmp_path), JOB) == 12


def test_a_redelivered_batch_replaces_its_file(tmp_path):
    sink.write_batch(str(tmp_path), JOB, 0, batch_records(0), k=2)
    sink.write_batch(str(tmp_path), JOB, 1, batch_records(1), k=2)
    sink.write_batch(str(tmp_path), JOB, 0, batch_records(0, weights="random:1"), k=2)  # delivered again
    rows = list(sink.read_job(str(tmp_path), JOB))
    assert [r.image for r in rows] == list(range(8))  # one row per image
    assert {r.weights for r in rows[:4]} == {"random:1"} and {r.weights for r in rows[4:]} == {"random:0"}
    assert sorted(os.listdir(tmp_path / JOB)) == ["batch-000000.parquet", "batch-000001.parquet"]


def test_an_absent_job_has_no_rows(tmp_path):
    assert list(sink.read_job(str(tmp_path), JOB)) == [] and sink.count_rows(str(tmp_path), JOB) == 0


def test_every_file_of_a_job_has_the_same_columns_when_k_is_given(tmp_path):
    errors_only = [error_record(JOB, i, f"/p/{i}.jpg", "missing", "no such file") for i in range(4)]
    sink.write_batch(str(tmp_path), JOB, 0, errors_only, k=2)
    sink.write_batch(str(tmp_path), JOB, 1, batch_records(1), k=2)
    schemas = [pq.read_schema(sink.batch_file(str(tmp_path), JOB, n)) for n in (0, 1)]
    assert schemas[0] == schemas[1] and "label_2" in schemas[0].names


KILLED_WRITER = """
import sys, time
from imgq import sink
from imgq.contract import ok_record

def half_then_hang(table, path):
    with open(path, "wb") as file:
        file.write(b"PAR1 half a file")
        file.flush()
        time.sleep(600)

sink._write_synced = half_then_hang
sink.write_batch(sys.argv[1], "job1", 0, [ok_record("job1", 0, "/p/new.jpg", [])], k=2)
"""


def test_a_writer_killed_mid_write_leaves_a_temporary_file_that_is_never_read(tmp_path):
    sink.write_batch(str(tmp_path), JOB, 0, batch_records(0), k=2)
    before = list(sink.read_job(str(tmp_path), JOB))
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while not [n for n in os.listdir(tmp_path / JOB) if n.endswith(".tmp")]:
            assert child.poll() is None and time.monotonic() < deadline, "the writer never started its file"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(os.listdir(tmp_path / JOB)) == 2  # the batch and the killed writer's temporary file
    assert list(sink.read_job(str(tmp_path), JOB)) == before
    assert sink.count_rows(str(tmp_path), JOB) == 4


# -- the sink as a job's store: counts in Redis, records in the files -------------------------------------


def sink_job(store, n=6, batch_size=4):
    from tests.jobs import commit_job

    return commit_job(store, "sunk1", [f"/img/{i}.jpg" for i in range(n)], batch_size=batch_size,
                      params={"sink": True})


def test_a_sink_jobs_counts_are_in_redis_and_its_records_in_the_files(store, tmp_path):
    from imgq import sink
    from imgq.contract import error_record, ok_record

    store.sink_dir = str(tmp_path / "sink")
    messages = sink_job(store)
    top = [{"wnid": "n01440764", "label": "tench", "score": 0.5}]
    first = [ok_record("sunk1", i, f"/img/{i}.jpg", top, weights="w") for i in range(4)]
    sink.write_batch(store.sink_dir, "sunk1", 0, first, k=5)
    assert store.record_sunk("sunk1", 0, first) == 4
    assert store.record_sunk("sunk1", 0, first) == 4  # a redelivery replaces the batch's count
    assert store.status("sunk1").state == "queued" and store.status("sunk1").processed == 4
    assert list(store.unfinished_batches("sunk1")) == messages[1:]
    assert store.batch("sunk1", 0) is None and store.batch("sunk1", 1) == messages[1]  # its paths are in the file
    second = [ok_record("sunk1", 4, "/img/4.jpg", top, weights="w"),
              error_record("sunk1", 5, "/img/5.jpg", "corrupt", "truncated", weights="w")]
    sink.write_batch(store.sink_dir, "sunk1", 1, second, k=5)
    assert store.record_sunk("sunk1", 1, second) == 6
    status = store.status("sunk1")
    assert (status.state, status.processed, status.failed) == ("done", 6, 1)
    assert list(store.iter_records("sunk1")) == first + second and store.record("sunk1", 5) == second[1]
    assert store.redis.hlen(store.keys.results("sunk1")) == 0  # nothing of the records in Redis
    store.delete("sunk1")
    assert not (tmp_path / "sink" / "sunk1").exists() and store.redis.keys(f"{store.keys.ns}:*") == []
