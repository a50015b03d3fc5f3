"""Dumps, embedding files and a Parquet sink on S3, end to end: a real worker whose IMGQ_DUMP_ROOT and IMGQ_SINK_DIR
are s3:// prefixes of a real S3 server (SeaweedFS's weed mini, tests/s3server.py) writes each file as one object,
keyed as its path would be; the producer reads them back from there (`imgq results --embeddings`, `imgq
duplicates`, `imgq results` of a sink job, `imgq delete`) with nothing of them on a local disk. A worker whose
destination cannot be written stops in one line before it is ready."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgq.results.store import ResultStore, delete_namespace
from tests import imagegen
from tests.conftest import make_settings
from tests.processes import Process, clean_env, imgq_cli, start_worker, wait_for_workers, wait_until_done

BUCKET = "imgq-outputs"
DUMPS, SINK = f"s3://{BUCKET}/team/dumps", f"s3://{BUCKET}/team/sink"
EXIT_TIMEOUT = 120.0  # importing Celery on a busy 2-core machine; a worker that does not refuse loads its model
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out_bucket(s3_server):
    """A boto3 client of the test's own, and the bucket made."""
    return s3_server.bucket(BUCKET)


@pytest.fixture(scope="module")
def s3_out(redis_url, s3_server, out_bucket, tmp_path_factory):
    """``(settings, store, worker, photos)``: a worker writing to DUMPS and SINK; 6 pictures and a byte copy."""
    base = tmp_path_factory.mktemp("s3-out")
    photos = base / "photos"
    photos.mkdir()
    for seed in range(6):
        imagegen.save(photos / f"p{seed}.jpg", fmt="JPEG", seed=seed)
    shutil.copyfile(photos / "p0.jpg", photos / "p0-same.jpg")
    settings = dataclasses.replace(make_settings(redis_url, base, batch_size=4), dump_root=DUMPS, sink_dir=SINK,
                                   s3_endpoint_url=s3_server.endpoint)
    store = ResultStore.from_settings(settings)
    worker = start_worker(settings, "s3out", base / "worker.log", env=s3_server.credentials)
    try:
        wait_for_workers(store, [worker])
        yield settings, store, worker, photos
    finally:
        worker.stop()
        delete_namespace(redis_url, settings.namespace)


def keys(client, prefix: str) -> list[str]:
    """Every key under ``prefix`` of the bucket, as the test's own client lists them."""
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        found += [item["Key"] for item in page.get("Contents", ())]
    return sorted(found)


def run_job(s3_out, s3_server, *args: str) -> str:
    settings, store, worker, photos = s3_out
    job = imgq_cli(settings, "submit", str(photos), *args, env=s3_server.env).stdout.strip().splitlines()[0]
    wait_until_done(store, job, 300, [worker])
    status = store.status(job)
    assert (status.ok, status.failed) == (7, 0), status
    return job


def test_dumps_are_objects_and_results_embeddings_reads_them(s3_out, s3_server, out_bucket, tmp_path):
    settings, store, _, _ = s3_out
    job = run_job(s3_out, s3_server, "--activations", "avg_pool")
    assert keys(out_bucket, f"team/dumps/{job}/") == sorted(f"team/dumps/{job}/{i}.npz" for i in range(7))
    records = list(store.iter_records(job))
    assert {r.activations["file"] for r in records} == {f"{DUMPS}/{job}/{i}.npz" for i in range(7)}
    assert not (Path(settings.state_dir) / "dumps").exists() and not Path("s3:").exists()
    out = tmp_path / "emb.npy"
    result = imgq_cli(settings, "results", job, "--embeddings", str(out), env=s3_server.env)
    assert "Wrote 7 embeddings (float16)" in result.output
    array = np.load(out)
    body = out_bucket.get_object(Bucket=BUCKET, Key=f"team/dumps/{job}/3.npz")["Body"].read()
    with np.load(io.BytesIO(body)) as dump:
        assert array.shape == (7, 2048) and np.array_equal(array[3], dump["avg_pool"])
    imgq_cli(settings, "show", job, "3", "--layer", "avg_pool", "-o", str(tmp_path / "map.png"), env=s3_server.env)
    assert (tmp_path / "map.png").stat().st_size > 0  # a heat map drawn from the object


def test_embedding_files_are_objects_and_duplicates_reads_them(s3_out, s3_server, out_bucket, tmp_path):
    settings, _, _, _ = s3_out
    job = run_job(s3_out, s3_server, "--embeddings")
    assert keys(out_bucket, f"team/dumps/{job}/") == [f"team/dumps/{job}/embeddings-00000{b}.npz" for b in (0, 1)]
    result = imgq_cli(settings, "duplicates", job, "--format", "csv", "--max-distance", "0", env=s3_server.env)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    [group] = {r["group"] for r in rows if Path(r["path"]).name == "p0-same.jpg"}
    members = {Path(r["path"]).name: r for r in rows if r["group"] == group}
    assert set(members) == {"p0.jpg", "p0-same.jpg"}
    assert [r["tier"] for r in members.values() if r["keeper"] != "True"] == ["identical"], members
    out = tmp_path / "emb.npy"
    imgq_cli(settings, "results", job, "--embeddings", str(out), env=s3_server.env)
    index = [json.loads(line) for line in (tmp_path / "emb.index.jsonl").read_text().splitlines()]
    assert np.load(out).shape == (7, 2048) and [e["row"] for e in index] == list(range(7))


def test_a_sink_is_objects_read_back_and_removed_with_its_job(s3_out, s3_server, out_bucket, tmp_path):
    settings, _, _, photos = s3_out
    job = run_job(s3_out, s3_server, "--sink")
    assert keys(out_bucket, f"team/sink/{job}/") == [f"team/sink/{job}/batch-00000{b}.parquet" for b in (0, 1)]
    result = imgq_cli(settings, "results", job, env=s3_server.env)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["path"] for r in records) == sorted(str(p) for p in photos.iterdir())
    assert [r["image"] for r in records] == list(range(7)) and {r["status"] for r in records} == {"ok"}
    out = tmp_path / "records.parquet"
    imgq_cli(settings, "results", job, "--format", "parquet", "-o", str(out), env=s3_server.env)
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == 7
    imgq_cli(settings, "delete", job, env=s3_server.env)
    assert keys(out_bucket, f"team/sink/{job}/") == []


def exit_code(worker: Process) -> int | None:
    try:
        return worker.popen.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        worker.stop()
        return None


@pytest.mark.parametrize(("setting", "env", "said"), [
    ("sink_dir", {}, "imgq worker: IMGQ_SINK_DIR: Cannot write s3://no-such-bucket-9/sink/.imgq-write-check: "
                     "no such bucket."),
    ("dump_root", {"AWS_SECRET_ACCESS_KEY": "not-the-secret-at-all"}, "imgq worker: IMGQ_DUMP_ROOT: Cannot write "
     f"{DUMPS}/.imgq-write-check: the object store refused access"),
], ids=["missing bucket", "wrong credentials"])
def test_a_destination_that_cannot_be_written_stops_the_worker_in_one_line(redis_url, s3_server, out_bucket, tmp_path,
                                                                          setting, env, said):
    where = "s3://no-such-bucket-9/sink" if setting == "sink_dir" else DUMPS
    settings = dataclasses.replace(make_settings(redis_url, tmp_path), s3_endpoint_url=s3_server.endpoint,
                                   **{setting: where})
    argv = [sys.executable, "-m", "worker", "--loglevel", "INFO"]
    worker = Process(argv, clean_env(**{**settings.as_env(), **s3_server.credentials, **env}),
                     tmp_path / "worker.log").start()
    code = exit_code(worker)
    output = worker.output()
    lines = [line for line in output.splitlines() if line.startswith("imgq worker: ")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith(said), output[-3000:]
    assert "Traceback" not in output and " ready in " not in output and "not-the-secret-at-all" not in output
