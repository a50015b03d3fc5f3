"""What the producer checks before it queues or starts anything (issue 25.2): a model folder's labels against the
model's outputs, read from its config without Keras; the weights against the model; the seed of random:SEED.
A mistake costs one line and no job: nothing is written to Redis, no server or worker is started. The worker,
which starts on the same settings, refuses them with the same line before it loads anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.imagegen import save
from tests.processes import clean_env
from tests.test_models import functional, keras_archive


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    save(folder / "a.jpg")
    return folder


def model_folder(tmp_path, outputs: int, labels=("dark", "bright"), name="digits"):
    """A model folder as the producer reads it: model.keras's config.json (a Dense of ``outputs`` units and a
    softmax), labels.txt."""
    folder = tmp_path / name
    folder.mkdir()
    keras_archive(folder / "model.keras", functional(outputs))
    (folder / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    return folder


def nothing_written(store, settings) -> bool:
    """No key of the namespace (jobs, batches, the model's queue, kombu's bindings): nothing was queued."""
    return list(store.raw.scan_iter(f"*{settings.namespace}*")) == []


def one_line(result, code: int) -> str:
    lines = result.stderr.splitlines()
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize("command", ["submit", "classify"])
def test_labels_of_the_wrong_count_are_one_line_and_no_job(run, store, settings, tmp_path, photos, command):
    folder = model_folder(tmp_path, outputs=3)
    line = one_line(run(command, str(photos), "--model", str(folder), env={"IMGQ_WEIGHTS": "imagenet"}), 2)
    assert f"{folder / 'labels.txt'}: 2 class names for 3 outputs of {folder / 'model.keras'}" in line
    assert nothing_written(store, settings)


def test_labels_that_break_the_label_rules_are_one_line_naming_the_line(run, store, settings, tmp_path, photos):
    folder = model_folder(tmp_path, outputs=3, labels=("cat", "\x1b]0;pwned\x07", "dog"))
    line = one_line(run("submit", str(photos), "--model", str(folder)), 2)
    assert f"{folder / 'labels.txt'}: line 2: " in line and "\x1b" not in line and "\x07" not in line
    assert nothing_written(store, settings)


@pytest.mark.parametrize("seed", ["-1", "4294967296", "nan", "1e999", "9" * 400, "abc", ""])
def test_a_bad_seed_is_one_line_whether_an_option_or_a_setting(run, store, settings, photos, seed):
    line = one_line(run("classify", str(photos), "--weights", f"random:{seed}"), 2)
    assert "'--weights'" in line and "integer seed from 0 to 4294967295" in line
    line = one_line(run("classify", str(photos), env={"IMGQ_WEIGHTS": f"random:{seed}"}), 1)
    assert line.startswith("Error: IMGQ_WEIGHTS") and "integer seed" in line
    assert nothing_written(store, settings)


def test_a_bad_seed_in_the_worker_command_is_one_line(settings):
    """Refused before `imgq worker` runs the worker program in its place (a process of its own here: were it
    not refused, the program would replace the test's)."""
    imgq = str(Path(sys.executable).parent / "imgq")
    done = subprocess.run([imgq, "worker", "--weights", "random:-1"], env=clean_env(**settings.as_env()),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr[-3000:]
    assert "'--weights'" in done.stderr and "integer seed" in done.stderr


@pytest.mark.parametrize("weights", ["random", "random:3"])
def test_random_weights_for_a_model_folder_are_one_line_and_no_job(run, store, settings, tmp_path, photos, weights):
    """A folder model carries its own weights: its architecture with random ones labels nothing (the worker
    refused it only once Keras had loaded the model)."""
    folder = model_folder(tmp_path, outputs=2)
    line = one_line(run("classify", str(photos), "--model", str(folder), "--weights", weights), 2)
    assert "'--weights'" in line and f"Received: {weights!r}" in line and str(folder) in line
    # The suite's environment says IMGQ_WEIGHTS=random: without --weights it is the setting that is wrong.
    line = one_line(run("classify", str(photos), "--model", str(folder)), 1)
    assert line.startswith("Error: IMGQ_WEIGHTS") and "Received: 'random'" in line
    assert nothing_written(store, settings)


def test_a_weights_file_that_is_not_there_is_one_line_and_no_job(run, store, settings, tmp_path, photos):
    missing = tmp_path / "nowhere" / "mine.weights.h5"
    line = one_line(run("classify", str(photos), "--weights", str(missing)), 2)
    assert f"{missing}: no such file" in line
    assert nothing_written(store, settings)


@pytest.mark.slow
@pytest.mark.parametrize(("outputs", "weights", "says"), [
    (3, "imagenet", "2 class names for 3 outputs"), (2, "random:5", "Received: 'random:5'"),
    (2, "random:-1", "integer seed")])
def test_the_worker_refuses_the_same_mistakes_in_one_line_before_loading_anything(settings, tmp_path, outputs,
                                                                                 weights, says):
    folder = model_folder(tmp_path, outputs=outputs)
    env = clean_env(**{**settings.as_env(), "IMGQ_MODEL": str(folder), "IMGQ_WEIGHTS": weights})
    done = subprocess.run([sys.executable, "-m", "worker"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr[-3000:]
    assert done.stderr.startswith("imgq worker: ") and says in done.stderr
