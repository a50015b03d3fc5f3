"""s3:// end to end: `imgq submit s3://bucket/prefix` against a real S3 server (SeaweedFS's weed mini,
tests/s3server.py) and a real worker reading the objects with no shared file system.

The producer's refusals (no such bucket, wrong credentials, a malformed URL) run the real `imgq` in a process of its
own: one line on stderr, exit code 1, no traceback. The worker's tests (slow) share one worker whose allowed roots
are one prefix of the bucket and one local folder.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from imgq.results.store import ResultStore, delete_namespace
from tests import imagegen, photogen
from tests.conftest import make_settings
from tests.processes import clean_env, imgq_cli, start_worker, wait_for_workers, wait_until_done

BUCKET = "imgq-e2e"
ALLOWED = f"s3://{BUCKET}/allowed"
HOOKS = str(Path(__file__).resolve().parent / "hooks")


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(imagegen.pattern(320, 240, seed=seed)).save(out, format="JPEG", quality=85)
    return out.getvalue()


def webp(seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(imagegen.pattern(320, 240, seed=seed)).save(out, format="WEBP", quality=80)
    return out.getvalue()


@pytest.fixture(scope="module")
def bucket(s3_server):
    """The bucket; returns ``put(key, data) -> url``."""
    client = s3_server.bucket(BUCKET)

    def put(key: str, data: bytes) -> str:
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
        return f"s3://{BUCKET}/{key}"

    return put


def imgq_process(settings, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """The real `imgq ARGS` in a process of its own (its errors as a user sees them)."""
    command = [str(Path(sys.executable).parent / "imgq"), *args]
    return subprocess.run(command, env=clean_env(**{**settings.as_env(), **env}), capture_output=True, text=True,
                          timeout=120)


def assert_one_line_refusal(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert all(word in result.stderr for word in words), result.stderr


# The producer alone (no worker): what a user's mistake or a missing server looks like.

def test_no_such_bucket_is_one_line(settings, s3_server):
    result = imgq_process(settings, s3_server.env, "submit", "s3://no-such-bucket-here/photos")
    assert_one_line_refusal(result, "Cannot list s3://no-such-bucket-here/photos", "no such bucket")


def test_wrong_credentials_are_one_line_without_the_secret(settings, s3_server, bucket):
    bucket("allowed/creds/a.jpg", jpeg(0))
    env = {**s3_server.env, "AWS_SECRET_ACCESS_KEY": "not-the-secret-at-all"}
    result = imgq_process(settings, env, "submit", f"{ALLOWED}/creds")
    assert_one_line_refusal(result, "refused access", "AWS_ACCESS_KEY_ID")
    assert "not-the-secret-at-all" not in result.stderr + result.stdout


def test_a_store_that_is_not_there_is_one_line(settings, s3_server):
    env = {**s3_server.env, "IMGQ_S3_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    result = imgq_process(settings, env, "submit", f"{ALLOWED}/x/")
    assert_one_line_refusal(result, "Cannot list", "did not answer")


@pytest.mark.parametrize(("url", "words"), [("s3://", ("bucket after s3://",)),
                                            ("s3:///photos", ("bucket after s3://",))])
def test_a_malformed_url_is_one_line(settings, s3_server, url, words):
    assert_one_line_refusal(imgq_process(settings, s3_server.env, "submit", url), *words)


def test_an_empty_prefix_selects_nothing(settings, s3_server, bucket):
    bucket("allowed/empty-sibling/a.jpg", jpeg(0))
    result = imgq_process(settings, s3_server.env, "submit", f"{ALLOWED}/empty")
    assert_one_line_refusal(result, "No images selected")


def test_a_bad_endpoint_setting_is_one_line(settings, s3_server):
    env = {**s3_server.env, "IMGQ_S3_ENDPOINT_URL": "127.0.0.1:8333"}
    assert_one_line_refusal(imgq_process(settings, env, "submit", f"{ALLOWED}/x/"), "IMGQ_S3_ENDPOINT_URL")


def test_a_producer_without_boto3_says_what_to_install(settings, s3_server, monkeypatch):
    """A producer installed without the s3 extra (`pip install .`): local paths work, an s3:// URL is refused
    in one line that names the extra (boto3 is imported at the first s3:// location, never before)."""
    from imgq.storage import s3 as s3_source

    monkeypatch.setitem(sys.modules, "boto3", None)  # what `import boto3` meets where it is not installed
    s3_source.forget_clients()
    try:
        result = imgq_cli(settings, "submit", f"{ALLOWED}/x/", env=s3_server.env, check=False)
    finally:
        s3_source.forget_clients()
    assert result.exit_code == 1 and "pip install 'imgq[s3]'" in result.output and "Traceback" not in result.output


# With a real worker.

@pytest.fixture(scope="module")
def worker_opens(tmp_path_factory) -> Path:
    """The file where the module's worker writes each location it opens (tests/hooks: TEST_HOOK_COUNT_OPENS)."""
    return tmp_path_factory.mktemp("s3-opens") / "opens.txt"


def opened(log: Path) -> Counter:
    """How many times the worker opened each location so far."""
    return Counter(log.read_text().splitlines()) if log.exists() else Counter()


@pytest.fixture(scope="module")
def s3_worker(redis_url, s3_server, bucket, tmp_path_factory, worker_opens):
    """``(settings, store, worker process, local folder)``: a worker that may read ALLOWED and the local folder,
    counting its opens in ``worker_opens``."""
    base = tmp_path_factory.mktemp("s3-worker")
    local = base / "local"
    local.mkdir()
    settings = dataclasses.replace(make_settings(redis_url, base, batch_size=4), allowed_roots=(ALLOWED, str(local)),
                                   s3_endpoint_url=s3_server.endpoint)
    store = ResultStore.from_settings(settings)
    hooks = {"PYTHONPATH": os.pathsep.join(p for p in (HOOKS, os.environ.get("PYTHONPATH", "")) if p),
             "TEST_HOOK_COUNT_OPENS": str(worker_opens)}
    worker = start_worker(settings, "s3", base / "worker.log", env={**s3_server.credentials, **hooks})
    try:
        wait_for_workers(store, [worker])
        yield settings, store, worker, local
    finally:
        worker.stop()
        delete_namespace(redis_url, settings.namespace)


def records_by_path(store: ResultStore, job: str) -> dict[str, dict]:
    records = [record.to_dict() for record in store.iter_records(job)]
    by_path = {record["path"]: record for record in records}
    assert len(by_path) == len(records)  # one record per image
    return by_path


def submitted_job(settings, s3_server, *args: str) -> str:
    result = imgq_cli(settings, "submit", *args, env=s3_server.env)
    return result.stdout.strip().splitlines()[0]


@pytest.mark.slow
def test_a_prefix_is_classified_each_image_once(s3_worker, s3_server, bucket):
    settings, store, worker, _ = s3_worker
    urls = [bucket(f"allowed/album/{folder}/p{index:02}.jpg", jpeg(index))
            for index in range(10) for folder in ("2023", "2024/summer")]
    urls.append(bucket("allowed/album/lossy.webp", webp(3)))  # no descriptor: sizes are read from memory
    urls.append(bucket("allowed/album/raw.dng", photogen.dng(Image.fromarray(imagegen.pattern(320, 240, 5)))))
    bucket("allowed/album/notes.txt", b"not an image")
    bucket("allowed/album/.thumbs/t.jpg", jpeg(99))
    result = imgq_cli(settings, "submit", f"{ALLOWED}/album", "--wait", env=s3_server.env)
    assert "skipped 1 file that is not an image (1 .txt)" in result.output
    job = result.stdout.strip().splitlines()[0]
    by_path = records_by_path(store, job)
    assert sorted(by_path) == sorted(urls)  # the URL is the record's path
    assert all(record["status"] == "ok" and len(record["top_k"]) == 5 for record in by_path.values()), by_path


@pytest.mark.slow
def test_forbidden_missing_and_local_in_one_list(s3_worker, s3_server, bucket, tmp_path):
    settings, store, worker, local = s3_worker
    good = bucket("allowed/list/good.jpg", jpeg(1))
    secret = bucket("secret/hidden.jpg", jpeg(2))  # exists, outside the worker's roots
    sneaky = f"{ALLOWED}/list/../../secret/hidden.jpg"
    missing = f"{ALLOWED}/list/none.jpg"
    on_disk = str(imagegen.save(local / "disk.png", seed=4))
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([good, secret, sneaky, missing, on_disk]) + "\n")
    job = submitted_job(settings, s3_server, "--from-file", str(listing))
    wait_until_done(store, job, 180, [worker])
    by_path = records_by_path(store, job)
    codes = {path: record["error"]["code"] if record["error"] else "ok" for path, record in by_path.items()}
    assert codes == {good: "ok", secret: "forbidden", sneaky: "forbidden", missing: "missing", on_disk: "ok"}
    assert by_path[secret]["error"]["message"] == "outside the allowed roots"


@pytest.mark.slow
def test_a_store_restarted_during_a_job_loses_no_image(s3_worker, s3_server, bucket):
    settings, store, worker, _ = s3_worker
    urls = [bucket(f"allowed/restart/p{index:02}.jpg", jpeg(100 + index)) for index in range(48)]
    job = submitted_job(settings, s3_server, f"{ALLOWED}/restart/", "--batch-size", "4")
    deadline = time.monotonic() + 180
    while store.status(job).processed == 0:  # the worker is reading the bucket
        assert time.monotonic() < deadline and worker.alive()
        time.sleep(0.05)
    s3_server.stop()
    try:
        time.sleep(4)
        assert not store.status(job).finished
    finally:
        s3_server.start()
    wait_until_done(store, job, 300, [worker])
    status = store.status(job)
    assert (status.total, status.ok, status.failed) == (48, 48, 0)
    assert sorted(records_by_path(store, job)) == sorted(urls)
    assert "did not answer" in worker.output()  # it did see the store gone, and handed batches back


@pytest.mark.slow
def test_skip_known_reads_each_image_once(s3_worker, s3_server, bucket, worker_opens, tmp_path):
    """--skip-known hashes an image's bytes and decodes the same bytes: one GET per object (counted by the S3
    server itself), one open per local file (counted in the worker), a copy and a missing object read once too."""
    settings, store, worker, local = s3_worker
    pictures = [bucket(f"allowed/once/p{index}.jpg", jpeg(300 + index)) for index in range(6)]
    copy = bucket("allowed/once/p0-copy.jpg", jpeg(300))  # the same bytes as p0: classified once, as p0's copy
    missing = f"{ALLOWED}/once/gone.jpg"
    on_disk = [str(imagegen.save(local / f"once-{index}.png", seed=40 + index)) for index in range(3)]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([pictures[0], copy, *pictures[1:], missing, *on_disk]) + "\n")  # p0, its copy: 1 batch
    gets, opens = s3_server.requests("GET"), opened(worker_opens)
    job = submitted_job(settings, s3_server, "--from-file", str(listing), "--skip-known", "--batch-size", "4")
    wait_until_done(store, job, 180, [worker])
    by_path = records_by_path(store, job)
    assert by_path[missing]["error"]["code"] == "missing"
    assert all(by_path[path]["status"] == "ok" for path in [*pictures, copy, *on_disk]), by_path
    assert by_path[copy]["known"] and by_path[copy]["top_k"] == by_path[pictures[0]]["top_k"]
    assert opened(worker_opens) - opens == Counter([*pictures, copy, *on_disk])  # the missing one never opened
    # SeaweedFS counts a request once its handler has returned, which may be after the worker got the answer:
    # waited for, then checked to be exactly that many (a counter only grows).
    expected = gets + len(pictures) + 2  # the copy's GET and the missing one's 404
    deadline = time.monotonic() + 10
    while s3_server.requests("GET") < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert s3_server.requests("GET") == expected


@pytest.mark.slow
def test_classify_reads_a_bucket_with_its_own_worker(s3_server, bucket, tmp_path):
    """`imgq classify s3://...` on a machine with nothing running: the worker it starts inherits the endpoint
    and the credentials, and the results file holds one row per object, its URL as its path."""
    urls = [bucket(f"allowed/classify/p{index}.jpg", jpeg(200 + index)) for index in range(5)]
    out = tmp_path / "labels.jsonl"
    env = clean_env(**s3_server.env, IMGQ_WEIGHTS="random", IMGQ_STATE_DIR=str(tmp_path / "state"),
                    IMGQ_RUNTIME="openvino")
    result = subprocess.run([str(Path(sys.executable).parent / "imgq"), "classify", f"{ALLOWED}/classify",
                             "--embedded-redis", "-o", str(out)], env=env, capture_output=True, text=True,
                            timeout=400, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in records) == sorted(urls) and {r["status"] for r in records} == {"ok"}


def tinted_jpeg(tint: tuple[float, float, float], seed: int) -> bytes:
    """A picture of random texture under a colour tint (what untrained features tell apart: tests/test_learn.py)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(rng.integers(90, 160), rng.integers(90, 160), 3)) * np.array(tint)
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.mark.slow
def test_learn_from_a_prefix_with_its_own_worker(s3_server, bucket, tmp_path):
    """`imgq learn s3://bucket/examples`: each sub-prefix a label, the examples read by the worker it starts, the
    head fitted on their features and written."""
    tints = {"red": (1.0, 0.25, 0.25), "blue": (0.25, 0.25, 1.0)}
    for n, (label, tint) in enumerate(tints.items()):
        for i in range(6):
            bucket(f"allowed/learn/{label}/{label}-{i}.jpg", tinted_jpeg(tint, seed=10 * n + i))
    head = tmp_path / "tints.head.json"
    env = clean_env(**s3_server.env, IMGQ_WEIGHTS="random", IMGQ_STATE_DIR=str(tmp_path / "state"),
                    IMGQ_RUNTIME="openvino")
    result = subprocess.run([str(Path(sys.executable).parent / "imgq"), "learn", f"{ALLOWED}/learn",
                             "-o", str(head), "--embedded-redis"], env=env, capture_output=True, text=True,
                            timeout=400, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Learning 2 labels from 12 examples: blue (6), red (6)" in result.stderr
    data = json.loads(head.read_text())
    assert data["labels"] == ["blue", "red"] and data["examples"] == {"blue": 6, "red": 6}
    assert data["figures"]["cv_accuracy"] >= 0.9, result.stderr


# `imgq report` on a job of objects: each thumbnail fetched through the byte source, within the same bounds.

def noisy_png(side: int, seed: int) -> bytes:
    """A PNG of random pixels: ``side`` x ``side`` of them cost about 3 x side^2 bytes, whatever the encoder."""
    import numpy as np

    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def object_job(settings, s3, bucket):
    """A job of records made here as a worker makes them (no worker needed: the report reads the objects)."""
    from imgq.contract import ok_record
    from imgq.jobs import submit as enqueue

    settings = dataclasses.replace(settings, allowed_roots=(ALLOWED,), max_file_bytes=100_000)
    urls = {"shown": bucket("allowed/report/shown.jpg", jpeg(400)),
            "missing": f"{ALLOWED}/report/gone.jpg",
            "forbidden": bucket("secret/report.jpg", jpeg(401)),
            "large": bucket("allowed/report/large.png", noisy_png(300, 402))}
    store = ResultStore.from_settings(settings)
    job = enqueue.submit(iter(urls.values()), settings=settings, store=store).job
    top = [{"wnid": "n01440764", "label": "tench", "score": 0.5}]
    store.record_results(job, [ok_record(job, i, url, top, weights="random:0") for i, url in enumerate(urls.values())])
    return settings, job, urls


def report_cards(page: Path) -> list[dict]:
    import re

    return json.loads(re.search(r'<script id="cards" type="application/json">(.*?)</script>', page.read_text(),
                                re.S)[1])


def test_report_shows_objects_and_says_in_one_line_why_not(object_job, s3_server, tmp_path):
    settings, job, urls = object_job
    out = tmp_path / "report.html"
    result = imgq_process(settings, s3_server.env, "report", job, "-o", str(out))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert os.listdir(tmp_path / "report_files" / "thumbs") == ["0.jpg"]
    assert Image.open(tmp_path / "report_files" / "thumbs" / "0.jpg").size == (160, 120)  # 320x240, fetched
    cards = report_cards(out)
    assert [card.get("np") for card in cards] == [
        None, "missing: no such object", "forbidden: outside the allowed roots",
        f"too_large: {len(noisy_png(300, 402))} bytes is more than 100000 (IMGQ_MAX_FILE_BYTES)"]
    told = [line for line in result.stderr.splitlines() if line.startswith("No thumbnail of")]
    assert told == [f"No thumbnail of {card['p']}: {card['np']}" for card in cards[1:]]


def test_report_with_the_store_away_is_written_with_one_line_each(object_job, s3_server, tmp_path):
    settings, job, urls = object_job
    env = {**s3_server.env, "IMGQ_S3_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    out = tmp_path / "report.html"
    result = imgq_process(settings, env, "report", job, "-o", str(out))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert os.listdir(tmp_path / "report_files" / "thumbs") == []
    problems = [card.get("np", "") for card in report_cards(out)]
    assert sum(problem.startswith("unavailable: ") for problem in problems) >= 1, problems
    # The forbidden one is refused before any request, unless the store was given up before its turn came.
    assert problems[2] == "forbidden: outside the allowed roots" or problems[2].startswith("not fetched: "), problems
    assert all(p.startswith(("unavailable: ", "not fetched: ")) for i, p in enumerate(problems) if i != 2), problems
    assert all("did not answer" in problem for i, problem in enumerate(problems) if i != 2), problems
    assert len([line for line in result.stderr.splitlines() if line.startswith("No thumbnail of")]) == 4
