"""The producer-only install the docs promise: `pip install .` without the worker extras (no TensorFlow, no
prometheus_client) runs the CLI, the schedules and `imgq beat`, which sends a tick by name to the queue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import Process, clean_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def producer_only(tmp_path_factory) -> Path:
    """A fresh venv with `pip install .` and nothing else; its bin folder."""
    venv = tmp_path_factory.mktemp("producer-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # From a copy of the sources: a build in the working tree would leave build/ and egg-info behind.
    source = tmp_path_factory.mktemp("source")
    for name in subprocess.run(["git", "-C", str(ROOT), "ls-files"], check=True, capture_output=True,
                               text=True).stdout.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(source)], capture_output=True,
                         text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert "project.license" not in pip.stderr, pip.stderr[-3000:]  # setuptools' deprecation of a TOML table
    return venv / "bin"


def run(bin_dir: Path, settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "imgq"), *args], env=clean_env(**settings.as_env()), capture_output=True,
                          text=True, timeout=60)


@pytest.mark.slow
def test_the_install_has_no_worker_extras(producer_only):
    missing = subprocess.run([str(producer_only / "python"), "-c", "import tensorflow"], capture_output=True)
    assert missing.returncode != 0
    missing = subprocess.run([str(producer_only / "python"), "-c", "import prometheus_client"], capture_output=True)
    assert missing.returncode != 0
    for decoder in ("pillow_heif", "rawpy"):  # the worker's decoders of HEIC and camera RAW
        missing = subprocess.run([str(producer_only / "python"), "-c", f"import {decoder}"], capture_output=True)
        assert missing.returncode != 0


@pytest.mark.slow
def test_the_install_carries_the_groups_table_and_wordnets_licence(producer_only):
    code = ("from importlib import resources; from imgq.labels import groups; print(groups.path_of('n02106166')); "
            "print('Princeton' in resources.files('imgq').joinpath('WORDNET_LICENSE').read_text())")
    found = subprocess.run([str(producer_only / "python"), "-c", code], capture_output=True, text=True, cwd="/")
    assert found.stdout.split("\n")[:2] == ["('animal', 'dog')", "True"], found.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", [["--help"], ["submit", "--help"], ["results", "--help"], ["beat", "--help"]])
def test_the_cli_answers(producer_only, settings, command):
    result = run(producer_only, settings, *command)
    assert result.returncode == 0 and "Usage: imgq" in result.stdout, result.stderr


@pytest.mark.slow
def test_schedules_and_beat_run_without_the_worker(producer_only, settings, store, tmp_path):
    (tmp_path / "photos").mkdir()
    added = run(producer_only, settings, "schedule", "add", "nightly", str(tmp_path / "photos"), "--every", "1h")
    assert added.returncode == 0, added.stderr
    listed = run(producer_only, settings, "schedule", "list")
    assert listed.returncode == 0 and "nightly" in listed.stdout
    beat = Process([str(producer_only / "imgq"), "beat", "--loglevel", "INFO"], clean_env(**settings.as_env()),
                   tmp_path / "beat.log").start()
    try:
        deadline = time.monotonic() + 60
        while store.queue_depth() == 0:  # no worker in this namespace: the tick stays queued
            assert beat.alive(), beat.output()[-3000:]
            assert time.monotonic() < deadline, f"beat sent no tick: {beat.output()[-3000:]}"
            time.sleep(0.2)
    finally:
        beat.stop()
    (envelope,) = [json.loads(raw) for raw in store.redis.lrange(store.keys.kombu_queue, 0, -1)]
    assert envelope["headers"]["task"] == "imgq.scheduled_scan" and envelope["headers"]["argsrepr"] == "['nightly']"
    assert "ModuleNotFoundError" not in beat.output() and os.path.basename(beat.argv[0]) == "imgq"


@pytest.mark.slow
def test_models_are_chosen_without_tensorflow(producer_only, settings, store, tmp_path):
    """Model names, a model folder's labels and name, and a built-in's layer table are read without Keras: a
    producer-only install submits to any model, and refuses an unknown name with the closest ones."""
    from tests.test_models import fake_keras

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"not decoded by the producer")
    folder = tmp_path / "defects"
    folder.mkdir()
    fake_keras(folder / "model.keras")
    (folder / "labels.txt").write_text("ok\nscratch\n")
    for model, name in (("efficientnetv2b0", "efficientnetv2b0"), (str(folder), "defects")):
        result = run(producer_only, settings, "submit", str(photos), "--model", model, "--activations",
                     "avg_pool" if model == name else "dense")
        assert result.returncode == 0, result.stderr
        assert store.status(result.stdout.strip()).model == name and store.queue_depth(name) == 1
    unknown = run(producer_only, settings, "submit", str(photos), "--model", "convnext")
    assert unknown.returncode == 2 and "Did you mean: convnexttiny" in unknown.stderr
    assert "Traceback" not in unknown.stderr and len(unknown.stderr.strip().splitlines()) == 1
    layers = run(producer_only, settings, "layers", "--model", "mobilenetv3large")
    assert layers.returncode == 0 and "flatten" in layers.stdout


@pytest.mark.slow
def test_a_label_count_is_checked_without_keras_and_an_h5_model_left_to_its_worker(producer_only, settings, store,
                                                                                   tmp_path):
    """Without the worker extras (no h5py either): a model.keras folder's labels.txt of the wrong length is one
    line and no job (its config.json is a zip's JSON); a model.h5 folder's count is its worker's to check."""
    from tests.test_models import functional, h5_model, keras_archive

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"not decoded by the producer")
    folder = tmp_path / "digits"
    folder.mkdir()
    keras_archive(folder / "model.keras", functional(3))
    (folder / "labels.txt").write_text("dark\nbright\n")
    refused = run(producer_only, settings, "submit", str(photos), "--model", str(folder))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "2 class names for 3 outputs" in refused.stderr and store.list_jobs() == []
    (folder / "model.keras").unlink()
    h5_model(folder / "model.h5", functional(3))  # h5py, with the worker extras, would read 3 outputs in it
    taken = run(producer_only, settings, "submit", str(photos), "--model", str(folder))
    assert taken.returncode == 0 and store.status(taken.stdout.strip()).model == "digits", taken.stderr
