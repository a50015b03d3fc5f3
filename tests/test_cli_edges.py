"""The CLI where a user's data is odd or a command meets a job in an unusual state: file names that are not
UTF-8, a damaged Parquet sink, untrained weights with --tag and --remove, a cancelled job requeued; and the
words it says (counts, rates, parameters). Against a real Redis, with click's CliRunner, whose standard
output is strict UTF-8 as a terminal's is under a UTF-8 locale."""

from __future__ import annotations

import json
import os

import pytest

from imgq import sink
from imgq.contract import ok_record
from tests.imagegen import save
from tests.jobs import commit_job
from tests.processes import imgq_cli

TRAINED = "file:test.weights.h5:sha256:" + "ab" * 32
TOP = [{"wnid": "n01440764", "label": "tench", "score": 0.75}, {"wnid": "n01443537", "label": "goldfish",
                                                               "score": 0.25}]


@pytest.fixture
def run(settings):
    return lambda *args, **kwargs: imgq_cli(settings, *args, check=False, **kwargs)


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
