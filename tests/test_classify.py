"""`imgq classify` with nothing running beforehand: it starts a Redis-compatible server and a worker,
writes the JSONL file and stops both."""

import csv
import json
import os
import re
import subprocess
import sys

import pytest

from producer.local.workers import redis_answers
from tests import imagegen
from tests.processes import free_port


def test_redis_answers(redis_url):
    assert redis_answers(redis_url)
    assert not redis_answers(f"redis://127.0.0.1:{free_port()}/0")


@pytest.mark.slow
def test_classify_starts_and_stops_what_it_needs(tmp_path):
    photos = tmp_path / "photos"
    images = imagegen.write_formats(photos)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "labels.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGQ_")}
    env.update(IMGQ_WEIGHTS="random", IMGQ_STATE_DIR=str(tmp_path / "state"))
    result = subprocess.run(
        [sys.executable, "-m", "producer.cli", "classify", str(photos), "--embedded-redis", "-o", str(out),
         "--tag", "--allow-untrained"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # --allow-untrained, which the refusal of --tag names (issue 20): every image classified has its sidecar.
    assert f"Sidecars: {len(images)} created" in result.stderr
    assert len(list(photos.glob("*.xmp"))) == len(images)

    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(images) + 1
    assert sorted(r["status"] for r in records).count("ok") == len(images)
    assert "WARNING: made with random weights" in result.stderr
    assert f"{len(images)} classified, 1 failed of {len(images) + 1}" in result.stderr

    # Both helpers are gone: the embedded server no longer answers and the worker process has exited.
    url = re.search(r"embedded Redis at (\S+) ", result.stderr).group(1)
    assert not redis_answers(url)
    pid = int(re.search(r"Started a worker \(pid (\d+)", result.stderr).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert (tmp_path / "state" / "redis").is_dir()  # its data stayed under the state directory


@pytest.mark.slow
def test_classify_says_why_its_worker_could_not_start(tmp_path):
    imagegen.write_formats(tmp_path / "photos")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGQ_")}
    env.update(IMGQ_WEIGHTS=str(tmp_path / "missing.weights.h5"), IMGQ_STATE_DIR=str(tmp_path / "state"))
    result = subprocess.run(
        [sys.executable, "-m", "producer.cli", "classify", str(tmp_path / "photos"), "--embedded-redis"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    # Checked before anything starts (issue 25.2): the weights file of the worker classify would start is not
    # there, which the producer can see itself, in one line, with no worker started and no job queued.
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: IMGQ_WEIGHTS: ") and "missing.weights.h5: no such file" in last, result.stderr
    assert not (tmp_path / "state" / "openvino").exists()  # no worker got as far as its model


@pytest.mark.slow
def test_classify_takes_what_submit_takes_and_writes_csv(tmp_path):
    photos = tmp_path / "photos"
    images = [imagegen.save(photos / f"{i}.png", size=(48, 48), seed=i) for i in range(4)]
    imagegen.save(photos / "thumbnails" / "t.png", seed=9)  # --exclude thumbnails
    imagegen.save(photos / "private" / "p.png", seed=10)
    (photos / "private" / ".nomedia").touch()  # skipped with its folder
    (photos / "clip.MOV").write_bytes(b"a video")  # counted and named as skipped
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "labels.csv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGQ_")}
    env.update(IMGQ_WEIGHTS="random", IMGQ_STATE_DIR=str(tmp_path / "state"), IMGQ_DUMP_ROOT=str(tmp_path / "dumps"))
    result = subprocess.run(
        [sys.executable, "-m", "producer.cli", "classify", str(photos), "--embedded-redis", "-o", str(out),
         "--format", "csv", "--min-score", "0.5", "--exclude", "thumbnails", "--skip-known",
         "--activations", "avg_pool", "--tag", "--verbose"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)

    # Random weights: the results file is written, the sidecars are refused with one line.
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: Job ") and "untrained" in result.stderr
    assert "--allow-untrained" in result.stderr.strip().splitlines()[-1]  # which classify takes
    assert "Traceback" not in result.stderr and not list(photos.rglob("*.xmp"))
    assert "images in 1 batch; skipped 2 files that are not images (1 .MOV, 1 .txt)." in result.stderr
    assert f"skipped: {photos / 'clip.MOV'}\nskipped: {photos / 'notes.txt'}\n" in result.stderr
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in images)
    assert all(r["status"] == "ok" and (not r["label_1"] or float(r["score_1"]) >= 0.5) for r in rows)
    job = rows[0]["job"]
    assert len(list((tmp_path / "dumps" / job).glob("*.npz"))) == len(images)
