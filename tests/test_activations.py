"""Activation dumps end to end: `imgq submit --activations` through a real worker (random weights), the .npz
files and records it writes, `imgq results --embeddings`, and what the CLI refuses before queueing."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from imgq.models.layers import layer_shapes
from imgq.results.store import ResultStore
from producer.cli import cli
from producer.exports.dumps import estimate_bytes
from tests import imagegen
from tests.test_walk_and_submit import queued_messages

LAYERS = ("conv1_relu", "avg_pool")


def invoke(settings, *args, env=None):
    return CliRunner().invoke(cli, list(args), env={**settings.as_env(), **(env or {})}, catch_exceptions=False)


def run_job(settings, *args) -> tuple[str, list[dict]]:
    """Submit, wait for the worker, and return the job id and its records."""
    result = invoke(settings, "submit", *args)
    assert result.exit_code == 0, result.output
    job = result.stdout.strip()
    assert invoke(settings, "wait", job, "--timeout", "180").exit_code == 0
    return job, list(ResultStore.from_settings(settings).iter_results(job))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Five pictures and a text file named .jpg, in submission (walk) order."""
    folder = tmp_path_factory.mktemp("pictures")
    for i in range(5):
        imagegen.save(folder / f"{i}.png", size=(160 + 20 * i, 120), seed=i)
    (folder / "5.jpg").write_text("not a picture")
    return folder


@pytest.fixture(scope="module")
def dumped(live_worker, worker_settings, pictures):
    """A job dumping conv1_relu and avg_pool (float16), the layers given in two options and out of order."""
    return run_job(worker_settings, str(pictures), "--activations", "avg_pool", "--activations", "conv1_relu",
                   "--batch-size", "3")


@pytest.mark.slow
def test_each_image_has_one_dump_with_the_layers_it_asked_for(dumped, worker_settings):
    job, records = dumped
    ok = [r for r in records if r["status"] == "ok"]
    [bad] = [r for r in records if r["status"] == "error"]
    assert len(ok) == 5 and bad["error"]["code"] == "not_an_image" and "activations" not in bad
    folder = os.path.join(worker_settings.effective_dump_root, job)
    # One dump per classified image, and no temporary file left behind.
    assert sorted(os.listdir(folder)) == sorted(f"{r['image']}.npz" for r in ok)
    for record in ok:
        entry = record["activations"]
        assert entry["file"] == os.path.join(folder, f"{record['image']}.npz")
        assert entry["dtype"] == "float16" and entry["layers"] == {n: list(layer_shapes()[n]) for n in LAYERS}
        assert entry["bytes"] == os.path.getsize(entry["file"])
        assert entry["bytes"] <= estimate_bytes(1, LAYERS, "float16") < entry["bytes"] * 1.001
        with np.load(entry["file"]) as dump:
            assert sorted(dump.files) == sorted(LAYERS)
            assert {n: (dump[n].shape, dump[n].dtype) for n in LAYERS} == {
                n: (layer_shapes()[n], np.float16) for n in LAYERS}
            assert dump["conv1_relu"].min() >= 0  # a ReLU's output
    vectors = [np.load(r["activations"]["file"])["avg_pool"] for r in ok]
    assert not np.array_equal(vectors[0], vectors[1])  # each image its own row of the batch


@pytest.mark.slow
def test_embeddings_follow_submission_order_with_an_index(dumped, worker_settings, tmp_path):
    job, records = dumped
    out = tmp_path / "emb.npy"
    result = invoke(worker_settings, "results", job, "--embeddings", str(out))
    assert result.exit_code == 0 and result.stdout == "" and "Wrote 5 embeddings (float16)" in result.stderr
    embeddings = np.load(out)
    index = [json.loads(line) for line in (tmp_path / "emb.index.jsonl").read_text().splitlines()]
    assert embeddings.shape == (5, 2048) and embeddings.dtype == np.float16
    rows = iter(range(5))  # rows in submission order, skipping the image without a dump
    assert [(e["image"], e["path"], e["row"]) for e in index] == [
        (r["image"], r["path"], next(rows) if r["status"] == "ok" else None) for r in records]
    assert [e.get("missing") for e in index if e["row"] is None] == ["not_an_image"]
    for entry in (e for e in index if e["row"] is not None):
        dump = np.load(os.path.join(worker_settings.effective_dump_root, job, f"{entry['image']}.npz"))
        assert np.array_equal(embeddings[entry["row"]], dump["avg_pool"])
    assert sorted(os.listdir(tmp_path)) == ["emb.index.jsonl", "emb.npy"]


@pytest.mark.slow
def test_a_report_of_the_real_job(dumped, worker_settings, tmp_path):
    job, _ = dumped
    result = invoke(worker_settings, "report", job, "-o", str(tmp_path / "r.html"))
    assert result.exit_code == 0, result.output
    assert "(6 images, 1 error) and 5 thumbnails and 10 heat-map grids" in result.stderr


@pytest.mark.slow
def test_float32_dumps(live_worker, worker_settings, pictures):
    job, records = run_job(worker_settings, str(pictures / "0.png"), str(pictures / "1.png"), "--activations",
                           "avg_pool", "--activations-dtype", "float32")
    assert [r["activations"]["dtype"] for r in records] == ["float32", "float32"]
    with np.load(records[0]["activations"]["file"]) as dump:
        assert dump.files == ["avg_pool"] and dump["avg_pool"].dtype == np.float32


def no_keys(store, settings) -> bool:
    return list(store.redis.scan_iter(match=f"{settings.namespace}:*")) == []


def test_an_unknown_layer_is_refused_with_suggestions_before_anything_is_queued(settings, store, pictures):
    result = invoke(settings, "submit", str(pictures), "--activations", "conv1_relu,conv3_block4_outt")
    assert result.exit_code == 2
    assert "ResNet50 has no layer 'conv3_block4_outt'. Did you mean: conv3_block4_out" in result.stderr
    assert "Traceback" not in result.output and no_keys(store, settings)


def test_the_disk_guard_refuses_a_large_job_unless_yes(settings, store, pictures):
    small = {"IMGQ_MAX_DUMP_BYTES": "100000"}  # 6 images of conv1_relu take ~9.6 MB
    result = invoke(settings, "submit", str(pictures), "--activations", "conv1_relu", env=small)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "about 9.2 MiB, over the limit of 97.7 KiB (IMGQ_MAX_DUMP_BYTES). Nothing was queued" in result.stderr
    assert no_keys(store, settings)  # the staged batches are gone too

    assert invoke(settings, "submit", str(pictures), "--activations", "avg_pool", env=small).exit_code == 0  # ~26 KB
    result = invoke(settings, "submit", str(pictures), "--activations", "conv1_relu", "--yes", env=small)
    assert result.exit_code == 0 and "about 9.2 MiB" in result.stderr
    status = store.status(result.stdout.strip())
    assert status.params["activations"] == ["conv1_relu"] and status.total == 6
    assert queued_messages(store, settings)[-1]["activations"] == ["conv1_relu"]


def test_layers_lists_every_layer_with_its_dump_size():
    lines = CliRunner().invoke(cli, ["layers"]).stdout.splitlines()
    assert len(lines) == 1 + len(layer_shapes())
    assert lines[0].split() == ["LAYER", "SHAPE", "FLOAT16", "FLOAT32"]
    assert next(line for line in lines if line.startswith("conv3_block4_out ")).split() == [
        "conv3_block4_out", "28x28x512", "784.0", "KiB", "1.5", "MiB"]


@pytest.mark.parametrize("command", ["layers", "report", "show"])
def test_help_of_the_new_commands(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and "Usage: " in result.output
