"""Models end to end, with real worker processes on one Redis: each job is answered by a worker of its model,
a job of a model no live worker serves waits (and says so), and `imgq classify --model` starts a worker of
its model when none of that model is alive."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from imgq.contract import BatchRef
from imgq.jobs.queue import publish
from imgq.results.store import ResultStore
from tests import imagegen
from tests.conftest import make_settings
from tests.processes import clean_env, imgq_cli, start_worker, wait_for_workers, wait_until_done

pytestmark = pytest.mark.slow

HOST = os.uname().nodename


def write_photos(folder, count: int) -> list[str]:
    return [str(imagegen.save(folder / f"{i:02d}.png", size=(48, 40), seed=i)) for i in range(count)]


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def submit(settings, folder, model: str, *args: str) -> str:
    return imgq_cli(settings, "submit", str(folder), "--model", model, "--batch-size", "3", *args).stdout.strip()


def test_two_models_on_one_redis_each_job_to_its_own_model(redis_url, tmp_path):
    """Two workers of different models share a Redis and a namespace; three jobs: one per model, answered by
    that model's worker alone, and one for a model nobody serves, which waits and is reported as waiting."""
    settings = make_settings(redis_url, tmp_path, runtime="tensorflow", heartbeat_seconds=1)
    store = ResultStore.from_settings(settings)
    workers = [start_worker(settings, "rn", tmp_path / "rn.log"),
               start_worker(replace(settings, model="efficientnetv2b0"), "eff", tmp_path / "eff.log")]
    try:
        write_photos(tmp_path / "photos", 7)
        wait_for_workers(store, workers)
        served = {w.hostname: (w.model, w.model_id) for w in store.workers()}
        assert served == {f"rn@{HOST}": ("resnet50", "resnet50"),
                          f"eff@{HOST}": ("efficientnetv2b0", "efficientnetv2b0")}
        # avg_pool, dumped: 1280 values in EfficientNetV2-B0, 2048 in ResNet50, which model ran shows in them.
        jobs = {model: submit(settings, tmp_path / "photos", model, "--activations", "avg_pool")
                for model in ("efficientnetv2b0", "resnet50")}
        jobs["convnexttiny"] = submit(settings, tmp_path / "photos", "convnexttiny")
        # A batch of the efficientnetv2b0 job sent by hand to resnet50's queue: the resnet50 worker sends it on
        # to its model's queue instead of classifying it.
        publish([BatchRef(jobs["efficientnetv2b0"], 0, "resnet50")], settings)
        for model in ("efficientnetv2b0", "resnet50"):
            wait_until_done(store, jobs[model], timeout=300, workers=workers)

        for model, worker, features in (("efficientnetv2b0", "eff", 1280), ("resnet50", "rn", 2048)):
            records = list(store.iter_results(jobs[model]))
            assert {tuple(r["activations"]["layers"]["avg_pool"]) for r in records} == {(features,)}
            assert [r["image"] for r in records] == list(range(7))  # exactly one record per image
            assert {(r["status"], r["model"], r["worker"]) for r in records} == {("ok", model, f"{worker}@{HOST}")}
            assert all(r["weights"].startswith("random") for r in records)  # and say so
            assert all(len(r["top_k"]) == 5 and "wnid" in r["top_k"][0] for r in records)  # ImageNet classes

        time.sleep(2 * settings.heartbeat_seconds)  # a worker that would take it has had its chance
        absent = store.status(jobs["convnexttiny"])
        assert (absent.state, absent.processed) == ("queued", 0)
        assert store.queue_depth("convnexttiny") == 3  # its 3 batches wait in its own queue
        status = imgq_cli(settings, "status", jobs["convnexttiny"]).stdout
        assert "waiting: no live worker serves model convnexttiny" in status
        text = imgq_cli(settings, "status", "--workers").stdout
        assert f"eff@{HOST} on " in text and "model efficientnetv2b0," in text and "model resnet50," in text
        deadline = time.monotonic() + 120
        while "is for model efficientnetv2b0, not resnet50: sent to that model's queue" not in workers[0].output():
            assert time.monotonic() < deadline, workers[0].output()[-3000:]
            time.sleep(0.5)
        wait_until(lambda: store.queue_depth("efficientnetv2b0") == 0 and not any(
            w.in_hand for w in store.workers()), 120)
        records = list(store.iter_results(jobs["efficientnetv2b0"]))
        assert {r["worker"] for r in records} == {f"eff@{HOST}"} and len(records) == 7
        for worker in workers:
            assert worker.alive()
    finally:
        for worker in workers:
            worker.stop(timeout=30)


def test_classify_starts_a_worker_of_its_model_when_none_is_alive(redis_url, tmp_path):
    """A resnet50 worker is alive; `imgq classify --model efficientnetv2b0` starts a worker of its model for
    its job (the resnet50 worker takes none of it), and stops it at the end."""
    settings = make_settings(redis_url, tmp_path, runtime="tensorflow", heartbeat_seconds=1)
    store = ResultStore.from_settings(settings)
    resnet = start_worker(settings, "rn", tmp_path / "rn.log")
    try:
        write_photos(tmp_path / "photos", 4)
        wait_for_workers(store, [resnet])
        out = tmp_path / "labels.jsonl"
        env = clean_env(**settings.as_env())
        result = subprocess.run(
            [sys.executable, "-m", "producer.cli", "classify", str(tmp_path / "photos"), "--model",
             "efficientnetv2b0", "--no-embedded-redis", "-o", str(out)],
            env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Started a worker (pid" in result.stderr and "model efficientnetv2b0" in result.stderr
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(records) == 4 and {(r["status"], r["model"]) for r in records} == {("ok", "efficientnetv2b0")}
        assert not any(r["worker"].startswith("rn@") for r in records)
        pid = int(re.search(r"Started a worker \(pid (\d+)", result.stderr).group(1))
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped by the classify that started it
        assert resnet.alive()
    finally:
        resnet.stop(timeout=30)


def test_an_unknown_model_is_refused_at_submit_without_a_worker(settings, tmp_path):
    """Refused before anything is walked or queued, with the closest names: one line, exit code 2."""
    write_photos(tmp_path / "photos", 1)
    env = clean_env(**settings.as_env())
    result = subprocess.run([sys.executable, "-m", "producer.cli", "submit", str(tmp_path / "photos"), "--model",
                             "resnet5O"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "Did you mean: resnet50" in result.stderr and "Traceback" not in result.stderr


def test_a_greyscale_cnn_from_a_model_folder_labels_follow_the_picture(redis_url, tmp_path):
    """The first CNN of every Keras lesson (28x28x1), served from its folder by `imgq worker --model FOLDER`;
    a job asks for it by name. Its weights are set so that the label follows the picture's brightness: each
    record's label is checked against the picture, and carries the class's index and the model's id."""
    from tests.user_models import brightness_folder, grey_picture

    folder = brightness_folder(tmp_path / "models" / "brightness")
    digest = hashlib.sha256((folder / "model.keras").read_bytes()).hexdigest()[:12]
    photos = tmp_path / "photos"
    photos.mkdir()
    levels = [20, 60, 100, 160, 200, 240]
    for i, level in enumerate(levels):
        grey_picture(photos / f"{i}.png", level, seed=i)
    imagegen.save(photos / "colour.png", size=(50, 30), seed=7)  # RGB: converted to one channel, as load_img does
    settings = make_settings(redis_url, tmp_path, heartbeat_seconds=1, weights="imagenet", model=str(folder))
    store = ResultStore.from_settings(settings)
    worker = start_worker(settings, "grey", tmp_path / "grey.log", cli=True)
    try:
        wait_for_workers(store, [worker])
        (heartbeat,) = store.workers()
        assert (heartbeat.model, heartbeat.model_id) == ("brightness", f"brightness@sha256:{digest}")
        producer = replace(settings, model="resnet50")  # the producer names the model; it has no folder
        job = imgq_cli(producer, "submit", str(photos), "--model", "brightness", "--top-k", "2").stdout.strip()
        wait_until_done(store, job, timeout=300, workers=[worker])
        records = {Path(r["path"]).name: r for r in store.iter_results(job)}
        assert {r["model"] for r in records.values()} == {f"brightness@sha256:{digest}"}
        for i, level in enumerate(levels):
            assert records[f"{i}.png"]["status"] == "ok", records[f"{i}.png"]["error"]
            best = records[f"{i}.png"]["top_k"][0]
            expected = "bright" if level > 128 else "dark"
            assert (best["label"], best["index"]) == (expected, ("dark", "bright").index(expected)), (level, best)
            assert "wnid" not in best and best["score"] > 0.9
        assert records["colour.png"]["status"] == "ok"
        csv_out = tmp_path / "labels.csv"
        imgq_cli(producer, "results", job, "--format", "csv", "-o", str(csv_out), "--min-score", "0.5")
        rows = {Path(r["path"]).name: r for r in csv.DictReader(csv_out.open())}
        assert (rows["0.png"]["label_1"], rows["0.png"]["index_1"], rows["0.png"]["label_2"]) == ("dark", "0", "")
    finally:
        worker.stop(timeout=30)
