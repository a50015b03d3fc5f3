"""The Parquet sink (imgq/results/sink.py): one file per batch, replaced on redelivery, temporary files never read."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from imgq.contract import error_record, ok_record
from imgq.results import sink

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
from imgq.results import sink
from imgq.contract import ok_record

def half_then_hang(batch, file):  # the file the sink's destination gave it: a temporary one beside the batch's
    file.write(b"PAR1 half a file")
    file.flush()
    time.sleep(600)

sink._write_table = half_then_hang
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
    from imgq.contract import error_record, ok_record
    from imgq.results import sink

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
    assert not (tmp_path / "sink" / "sunk1").exists()
    assert store.redis.keys(f"{store.keys.ns}:*") == [store.keys.sinks]  # until the reconciler's next pass
    store.forget_expired()
    assert store.redis.keys(f"{store.keys.ns}:*") == []


def finished_sink_job(store, job: str = "sunk1", retention: int = 0) -> None:
    """A sink job of 6 images in 2 batches, written to ``store.sink_dir`` and counted, as workers do."""
    from imgq.contract import ok_record

    messages = [{"v": 1, "job": job, "batch": b, "top_k": 1, "images": [[i, f"/img/{i}.jpg"] for i in range(s, s + 3)]}
                for b, s in ((0, 0), (1, 3))]
    store.stage_batches(job, messages)
    store.commit_job(job, name=job, total=6, batches=2, params={"top_k": 1, "sink": True}, retention=retention)
    for message in messages:
        records = [ok_record(job, i, path, top(0.75), weights="w") for i, path in message["images"]]
        sink.write_batch(store.sink_dir, job, message["batch"], records, k=2)
        store.record_sunk(job, message["batch"], records)
    assert store.status(job).state == "done"


def test_an_expired_sink_jobs_files_are_removed_by_the_reconciler(store, tmp_path):
    """Retention expired a sink job's keys and never its files: the sink grew for ever. The reconciler's
    ``forget_expired`` (every period, on a worker, which sees the sink) now removes them."""
    store.sink_dir = str(tmp_path / "sink")
    finished_sink_job(store, "kept")
    finished_sink_job(store, "expiring", retention=1)
    time.sleep(1.5)  # past its retention: its keys are gone
    assert not store.redis.exists(store.keys.job("expiring")) and (tmp_path / "sink" / "expiring").exists()
    store.forget_expired()
    assert not (tmp_path / "sink" / "expiring").exists()
    assert sink.count_rows(store.sink_dir, "kept") == 6 and store.redis.smembers(store.keys.sinks) == {"kept"}


def test_results_tag_and_delete_of_a_sink_job_whose_files_are_elsewhere_say_so(settings, store, tmp_path):
    """Run where IMGQ_SINK_DIR is not the workers' sink (another machine, a volume not mounted), `results`,
    `tag` and `delete` found no file and exited 0 with nothing. `results` and `tag` now name the missing files
    and where they looked (exit 1); `delete` deletes the job and says the workers remove the files."""
    from tests.processes import imgq_cli

    store.sink_dir = str(tmp_path / "workers-sink")
    finished_sink_job(store)
    here = {"IMGQ_SINK_DIR": str(tmp_path / "here")}
    folder = tmp_path / "here" / "sunk1"
    for command in (["results", "sunk1"], ["tag", "sunk1", "--dry-run"]):
        result = imgq_cli(settings, *command, check=False, env=here)
        assert result.exit_code == 1 and result.stdout == "", result.output
        assert result.stderr.strip() == (
            f"Error: Job sunk1 keeps its records in Parquet files, and 2 of its 2 batch files are not in {folder} "
            "on this machine (batch-000000.parquet, batch-000001.parquet): run this where IMGQ_SINK_DIR is the "
            "workers' sink folder.")
    (tmp_path / "workers-sink" / "sunk1" / "batch-000001.parquet").unlink()  # lost on the workers' side too
    result = imgq_cli(settings, "results", "sunk1", check=False, env={"IMGQ_SINK_DIR": store.sink_dir})
    assert result.exit_code == 1 and "1 of its 2 batch files are not in" in result.stderr

    deleted = imgq_cli(settings, "delete", "sunk1", env=here)
    assert deleted.stderr.splitlines() == [
        "Deleted job sunk1.", f"warning: 2 of its Parquet batch files are not in {folder} on this machine: the "
        "workers remove them from their sink folder at their next reconcile (IMGQ_RECONCILE_SECONDS)."]
    assert (tmp_path / "workers-sink" / "sunk1").exists()
    store.forget_expired()  # the workers' reconciler, which sees their sink
    assert not (tmp_path / "workers-sink" / "sunk1").exists() and store.redis.smembers(store.keys.sinks) == set()


def test_a_delete_that_cannot_remove_the_files_says_so_in_one_line_and_the_reconciler_tries_again(
        settings, store, tmp_path):
    """A delete whose files could not be removed printed a traceback after the job's keys were gone. Now one
    line, exit 1, and the id stays for the workers' reconciler, which removes the files once it can. Here a
    file cannot be unlinked because a folder stands under its name (EISDIR, which root meets too). A sink
    folder that is read-only here (access(2): EROFS, EACCES) is refused before anything is deleted."""
    from tests.processes import imgq_cli

    store.sink_dir = str(tmp_path / "sink")
    finished_sink_job(store)
    stuck = tmp_path / "sink" / "sunk1" / "batch-000002.parquet"
    stuck.mkdir()
    result = imgq_cli(settings, "delete", "sunk1", check=False, env={"IMGQ_SINK_DIR": store.sink_dir})
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: Deleted job sunk1, but its Parquet files in {stuck.parent} could not be removed (")
    assert line.endswith("the workers' reconciler tries again every IMGQ_RECONCILE_SECONDS; remove them by hand if "
                         "it cannot.")
    assert not store.redis.exists(store.keys.job("sunk1"))
    store.forget_expired()
    assert stuck.parent.exists() and store.redis.smembers(store.keys.sinks) == {"sunk1"}  # tried, kept for later
    stuck.rmdir()
    store.forget_expired()
    assert not stuck.parent.exists() and store.redis.smembers(store.keys.sinks) == set()
