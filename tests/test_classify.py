"""`imgq classify` with nothing running beforehand: it starts a Redis-compatible server and a worker,
writes the JSONL file and stops both."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from producer.local import redis_answers
from tests import imagegen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        [sys.executable, "-m", "producer.cli", "classify", str(photos), "--embedded-redis", "-o", str(out)],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr

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
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: The worker exited with code 2: Weights file not found: ") and "(log: " in last
