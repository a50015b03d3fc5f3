"""imgq/models/spec.py and imgq/models/folder.py: model names and folders, read without Keras."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import pytest

from imgq.labels.classes import class_index
from imgq.models.folder import read_model_folder
from imgq.models.resolve import resolve
from imgq.models.spec import BUILTIN, DEFAULT_MODEL, ModelError, builtin_spec, check_model_name


def fake_keras(path, shape=(28, 28, 1)) -> bytes:
    """A .keras archive with only what the producer reads of one: config.json's input layer."""
    config = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, *shape]}}]}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
    return path.read_bytes()


@pytest.fixture
def folder(tmp_path):
    model = tmp_path / "digits"
    model.mkdir()
    fake_keras(model / "model.keras")
    (model / "labels.txt").write_text("dark\nbright\n")
    return model


def test_the_default_is_resnet50_with_imagenet_classes():
    spec = resolve(DEFAULT_MODEL)
    assert spec.id == "resnet50" and spec.folder is None and spec.file_digest is None
    assert spec.labels == tuple(name for _, name in class_index()) and len(spec.wnids) == 1000
    assert (spec.input_size, spec.channels, spec.preprocessing, spec.resize, spec.interpolation, spec.outputs,
            spec.feature_layer) == ((224, 224), 3, "caffe", "squash", "nearest", "softmax", "avg_pool")


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_resolves(name):
    spec = resolve(name)
    assert spec.id == name and spec.imagenet and spec.builtin is BUILTIN[name]


@pytest.mark.parametrize(("name", "close"), [("resnet", "resnet50"), ("efficientnetv2-b0", "efficientnetv2b0"),
                                             ("ConvNextTiny", "convnexttiny")])
def test_an_unknown_name_gives_the_closest(name, close):
    with pytest.raises(ModelError, match="Unknown model") as info:
        resolve(name)
    assert close in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["", "a:b", "x" * 65, "a*", "a b", "../x"])
def test_model_names_usable_in_keys(name):
    with pytest.raises(ModelError):
        check_model_name(name)
    assert check_model_name("my-model_2.1") == "my-model_2.1"


def test_a_folder_model(folder):
    spec = resolve(str(folder))
    digest = hashlib.sha256((folder / "model.keras").read_bytes()).hexdigest()[:12]
    assert spec.name == "digits" and spec.folder == str(folder) and spec.labels == ("dark", "bright")
    assert spec.id == f"digits@sha256:{digest}" and spec.wnids is None and not spec.imagenet
    assert (spec.input_size, spec.channels, spec.preprocessing, spec.resize, spec.outputs) == (
        (28, 28), 1, "none", "squash", "softmax")
    assert spec.model_path == str(folder / "model.keras")


def test_the_manifest_names_and_configures(folder):
    (folder / "imgq-model.toml").write_text('name = "mnist"\npreprocessing = "tf"\nresize = "crop"\n'
                                            'interpolation = "bilinear"\noutputs = "logits"\n')
    spec = read_model_folder(str(folder))
    assert (spec.name, spec.preprocessing, spec.resize, spec.interpolation, spec.outputs) == (
        "mnist", "tf", "crop", "bilinear", "logits")


def one_line_error(folder) -> str:
    with pytest.raises(ModelError) as info:
        read_model_folder(str(folder))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("labels", "expected"), [
    (b"", "no class names"), (b"a\n\nb\n", "line 2 is empty"), (b"a\nb\na\n", "line 3 repeats 'a'"),
    (b"\xff\xfe\x00", "not UTF-8")])
def test_bad_labels(folder, labels, expected):
    (folder / "labels.txt").write_bytes(labels)
    message = one_line_error(folder)
    assert expected in message and "labels.txt" in message


@pytest.mark.parametrize(("manifest", "expected"), [
    ('name = "resnet50"', "built-in model's"), ('name = "a b"', "not letters"),
    ("preprocessing = 'vgg'", "expected one of"),
    ("colour = 1", "unknown key 'colour'"), ("name = [", "not valid TOML"), ("feature_layer = 3", "non-empty string")])
def test_bad_manifests(folder, manifest, expected):
    (folder / "imgq-model.toml").write_text(manifest)
    assert expected in one_line_error(folder)


def test_missing_files(folder):
    (folder / "labels.txt").unlink()
    assert "labels.txt: missing" in one_line_error(folder)
    (folder / "labels.txt").write_text("a\n")
    (folder / "model.keras").unlink()
    assert "no model.keras" in one_line_error(folder)
    (folder / "model.keras").write_bytes(b"not a zip")
    assert "not a Keras model archive" in one_line_error(folder)
    assert "no such model folder" in str(pytest.raises(ModelError, resolve, str(folder / "nope")).value)


def test_no_links_out_of_the_folder_nor_special_files(folder, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("a\nb\n")
    (folder / "labels.txt").unlink()
    (folder / "labels.txt").symlink_to(outside)
    assert "a link out of the model folder" in one_line_error(folder)
    (folder / "labels.txt").unlink()
    os.mkfifo(folder / "labels.txt")  # opened without O_NONBLOCK, reading it would hang
    assert "not a regular file" in one_line_error(folder)
    (folder / "labels.txt").unlink()
    (folder / "labels.txt").mkdir()
    assert "labels.txt" in one_line_error(folder)


def test_h5_models_leave_the_input_to_the_worker(folder):
    (folder / "model.keras").rename(folder / "model.h5")
    spec = read_model_folder(str(folder))
    assert spec.input_size == (0, 0) and spec.channels == 0 and spec.model_file == "model.h5"


def test_builtin_spec_refuses_folders():
    with pytest.raises(ModelError):
        builtin_spec("/tmp")
