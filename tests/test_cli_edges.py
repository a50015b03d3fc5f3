"""The CLI where a user's data is odd or a command meets a job in an unusual state: file names that are not
UTF-8, a damaged Parquet sink, untrained weights with --tag and --remove, a cancelled job requeued; and the
words it says (counts, rates, parameters). Against a real Redis, with click's CliRunner, whose standard
output is strict UTF-8 as a terminal's is under a UTF-8 locale."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import pytest

from imgq.contract import ok_record
from imgq.results import sink
from tests.imagegen import save
from tests.jobs import commit_job

TRAINED = "file:test.weights.h5:sha256:" + "ab" * 32
TOP = [{"wnid": "n01440764", "label": "tench", "score": 0.75}, {"wnid": "n01443537", "label": "goldfish",
                                                               "score": 0.25}]


def finished_job(store, paths: list[str], job="job1", weights=TRAINED, name="") -> str:
    commit_job(store, job, paths, name=name)
    store.mark_started(job)
    store.record_results(job, [ok_record(job, i, path, TOP, weights=weights) for i, path in enumerate(paths)])
    return job


@pytest.fixture
def latin1_photo(tmp_path) -> str:
    """A photo whose name is Latin-1 bytes (b'caf\\xe9.jpg'), as an old camera card or Samba share leaves them:
    not UTF-8, so Python holds it with a surrogate."""
    path = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"caf\xe9.jpg"))
    save(tmp_path / "x.jpg")
    os.rename(tmp_path / "x.jpg", path)
    return path


def test_tag_dry_run_prints_a_file_name_that_is_not_utf8_as_its_bytes(run, store, latin1_photo):
    job = finished_job(store, [latin1_photo])
    result = run("tag", job, "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes.startswith(os.fsencode(latin1_photo) + b".xmp: would create: +tench")
    assert not os.path.exists(latin1_photo + ".xmp")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_results_on_stdout_keep_a_file_name_that_is_not_utf8(run, store, latin1_photo, fmt):
    job = finished_job(store, [latin1_photo])
    result = run("results", job, "--format", fmt)
    assert result.exit_code == 0, result.output
    if fmt == "csv":
        assert os.fsencode(latin1_photo) in result.stdout_bytes  # the name's own bytes, as a file written has
    else:
        assert json.loads(result.stdout)["path"] == latin1_photo


def test_a_damaged_sink_file_is_one_line(run, store, settings, tmp_path):
    commit_job(store, "sunk1", [f"/img/{i}.jpg" for i in range(6)], batch_size=4, params={"sink": True})
    for batch, images in ((0, range(4)), (1, range(4, 6))):
        records = [ok_record("sunk1", i, f"/img/{i}.jpg", TOP, weights=TRAINED) for i in images]
        sink.write_batch(settings.effective_sink_dir, "sunk1", batch, records, k=5)
        store.record_sunk("sunk1", batch, records)
    damaged = sink.batch_file(settings.effective_sink_dir, "sunk1", 1)
    with open(damaged, "r+b") as file:
        file.truncate(os.path.getsize(damaged) // 2)
    out = tmp_path / "out.jsonl"
    result = run("results", "sunk1", "-o", str(out))
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: Cannot read batch 1 of job sunk1 from its sink, {damaged}: ")
    assert not out.exists()  # nothing half-written


# -- untrained weights and --tag, --remove --------------------------------------------------------------


def test_tag_remove_needs_no_allow_untrained(run, store, tmp_path):
    photo = str(save(tmp_path / "0.jpg"))
    job = finished_job(store, [photo], weights="random:0")
    refused = run("tag", job)
    assert refused.exit_code == 1 and "--allow-untrained" in refused.stderr and not os.path.exists(photo + ".xmp")
    assert run("tag", job, "--allow-untrained").exit_code == 0 and os.path.exists(photo + ".xmp")
    removed = run("tag", job, "--remove")
    assert removed.exit_code == 0, removed.output
    assert not os.path.exists(photo + ".xmp")  # the sidecar imgq made, emptied, goes


def test_classify_has_the_allow_untrained_its_refusal_names(run):
    result = run("classify", "--help")
    assert "--allow-untrained" in result.stdout and "unless --allow-untrained" in " ".join(result.stdout.split())


# -- a cancelled job requeued ---------------------------------------------------------------------------


def test_requeue_of_a_cancelled_job_says_so_and_resume_takes_the_cancellation_back(run, store, settings, tmp_path):
    from tests.test_walk_and_submit import queued_messages

    for i in range(5):
        (tmp_path / f"{i}.jpg").write_bytes(b"not decoded by the producer")
    job = run("submit", str(tmp_path), "--batch-size", "2", "--retention", "1h").stdout.strip()
    store.record_results(job, [ok_record(job, i, f"/p/{i}.jpg", TOP, weights=TRAINED) for i in (0, 1)])
    assert run("cancel", job).exit_code == 0
    assert store.redis.ttl(store.keys.job(job)) > 0  # its retention has started
    store.redis.delete(store.keys.kombu_queue)  # the workers skipped what was queued

    refused = run("requeue", job)
    assert refused.exit_code == 1 and refused.stderr.splitlines() == [
        f"Error: Job {job} is cancelled: its workers skip the 3 images without a record. `imgq requeue {job} "
        "--resume` takes the cancellation back and queues them."]
    assert store.redis.llen(store.keys.kombu_queue) == 0 and store.status(job).state == "cancelled"

    resumed = run("requeue", job, "--resume")
    assert resumed.exit_code == 0 and "Queued 2 batches of job" in resumed.stderr
    status = store.status(job)
    assert status.state == "queued" and status.expires_at is None and job in store.active_jobs()
    assert store.redis.ttl(store.keys.job(job)) == -1  # kept until it finishes, then its retention starts again
    assert [m["batch"] for m in queued_messages(store, settings)] == [1, 2]
    store.record_results(job, [ok_record(job, i, f"/p/{i}.jpg", TOP, weights=TRAINED) for i in (2, 3, 4)])
    assert store.status(job).state == "done" and store.redis.ttl(store.keys.job(job)) > 0
    assert run("requeue", job).stderr == f"Job {job} is done: every image has a record, nothing to queue.\n"


# -- words ----------------------------------------------------------------------------------------------


def test_one_is_singular_and_params_are_words(run, store, settings, tmp_path):
    (tmp_path / "0.jpg").write_bytes(b"not decoded by the producer")
    job = run("submit", str(tmp_path), "--retention", "2d").stdout.strip()
    assert run("status", job).stderr == "" and "Queued 1 image in 1 batch." in run("submit", str(tmp_path)).stderr
    lines = dict(line.strip().split(": ", 1) for line in run("status", job).stdout.splitlines())
    assert lines["params"] == (f"top_k 5, batch_size {settings.batch_size}, model resnet50, feature_layer avg_pool, "
                               "retention 2d") and lines["rate"] == "-"
    assert run("status", "--workers").stdout.splitlines()[0] == "2 batches queued; 0 workers alive; 2 jobs in flight."
    store.record_results(job, [ok_record(job, 0, "/p/0.jpg", TOP, weights=TRAINED)])
    store.mark_started(job)
    done = run("status", job, "--json")
    assert json.loads(done.stdout)["rate"] is None  # one image in a moment: no rate, not "1310.7/s"


def test_a_sidecar_that_cannot_be_written_is_said_once(run, store):
    """/proc/version exists and its folder takes no new file: the write fails in imgq.storage.files.atomic_path."""
    job = finished_job(store, ["/proc/version"])
    result = run("tag", job)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines()[0] == "warning: cannot write /proc/version.xmp: No such file or directory"


@pytest.mark.parametrize(("workers", "said"), [(1, "Using the live worker, with weights imagenet: "),
                                               (2, "Using the 2 live workers, with weights imagenet: ")])
def test_classify_names_the_live_workers_it_uses_in_good_english(store, settings, capsys, workers, said):
    from contextlib import ExitStack

    from imgq.contract import Heartbeat
    from producer.local.watch import Workers

    for n in range(workers):
        store.send_heartbeat(f"w{n}:1", Heartbeat(hostname=f"w{n}", pid=1, weights="imagenet", sent_at=time.time()),
                             ttl=30)
    with ExitStack() as started:
        workers_ = Workers(dataclasses.replace(settings, weights="random:0"), store, started)
        workers_.ensure()
        assert workers_.worker is None  # none started: the live ones are used
    assert capsys.readouterr().err.startswith(said)
