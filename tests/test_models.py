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


# A model's output count, read from its config as Keras writes it (Keras 3's .keras config.json and .h5
# model_config; the legacy Keras 2 .h5 of tf.keras too), so that `imgq submit --model FOLDER` refuses a
# labels.txt of the wrong length before anything is queued (issue 25.2).

def _input(shape=(28, 28, 1)) -> dict:
    return {"class_name": "InputLayer", "config": {"batch_shape": [None, *shape], "name": "input_layer"},
            "name": "input_layer", "inbound_nodes": []}


def _layer(kind: str, name: str, source: str, shape: list | None, legacy=False, **config) -> dict:
    """A layer of a functional model called on ``source``; Keras 3 records the shape it was called on."""
    called = {"class_name": "__keras_tensor__", "config": {"shape": shape, "keras_history": [source, 0, 0]}}
    inbound = [[[source, 0, 0, {}]]] if legacy else [{"args": [called], "kwargs": {}}]
    return {"class_name": kind, "config": {"name": name, **config}, "name": name, "inbound_nodes": inbound}


def functional(units: int, last: str | None = "Softmax", legacy=False) -> dict:
    layers = [_input(), _layer("Flatten", "flatten", "input_layer", [None, 28, 28, 1], legacy),
              _layer("Dense", "classes", "flatten", [None, 784], legacy, units=units, activation="linear")]
    if last:
        layers.append(_layer(last, "probabilities", "classes", [None, units], legacy))
    output = [layers[-1]["name"], 0, 0]
    return {"class_name": "Functional" if not legacy else "Model",
            "config": {"name": "m", "layers": layers, "input_layers": [["input_layer", 0, 0]],
                       "output_layers": [output] if legacy else output}}


def sequential(units: int, last: str | None = "Activation") -> dict:
    layers = [{"class_name": "InputLayer", "config": {"batch_shape": [None, 28, 28, 1], "name": "input"}},
              {"class_name": "Flatten", "config": {"name": "flatten"}},
              {"class_name": "Dense", "config": {"name": "dense", "units": units}}]
    if last:
        layers.append({"class_name": last, "config": {"name": "act", "activation": "softmax"}})
    return {"class_name": "Sequential", "config": {"name": "s", "layers": layers}}


def nested(units: int) -> dict:
    """A functional model whose output is a nested Sequential's (Keras' transfer-learning guide nests so)."""
    called = {"class_name": "__keras_tensor__",
              "config": {"shape": [None, 28, 28, 1], "keras_history": ["input_layer", 0, 0]}}
    inner = {**sequential(units, last=None), "name": "inner", "inbound_nodes": [{"args": [called], "kwargs": {}}]}
    return {"class_name": "Functional", "config": {"name": "outer", "layers": [_input(), inner],
                                                   "input_layers": ["input_layer", 0, 0],
                                                   "output_layers": ["inner", 0, 0]}}


def keras_archive(path, config: dict) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))


def h5_model(path, config: dict) -> None:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as file:
        file.attrs["model_config"] = json.dumps(config)
        file.create_group("model_weights")


@pytest.mark.parametrize("config", [functional(3), functional(3, last=None), functional(3, legacy=True),
                                    functional(3, last="Dropout", legacy=True), sequential(3),
                                    sequential(3, last=None), nested(3)],
                         ids=["functional", "functional-dense", "keras2", "keras2-dropout", "sequential",
                              "sequential-dense", "nested"])
@pytest.mark.parametrize("model_file", ["model.keras", "model.h5"])
def test_labels_of_the_wrong_count_are_refused_without_keras(folder, config, model_file):
    (folder / "model.keras").unlink()
    (keras_archive if model_file == "model.keras" else h5_model)(folder / model_file, config)
    message = one_line_error(folder)
    assert f"{folder / 'labels.txt'}: 2 class names for 3 outputs of {folder / model_file}" in message
    (folder / "labels.txt").write_text("a\nb\nc\n")
    assert read_model_folder(str(folder)).labels == ("a", "b", "c")


@pytest.mark.parametrize("config", [
    functional(3, last="GlobalAveragePooling2D"),  # not a count the config says plainly: the worker's check
    {"class_name": "Functional", "config": {"layers": [_input()], "output_layers": [["a", 0, 0], ["b", 0, 0]]}},
    sequential("3"),  # not a number
    {"class_name": "Sequential", "config": {}}, {"config": []}, {"class_name": "Functional", "config": {
        "layers": [_input(), {"class_name": "Dense", "config": {"units": 3}, "name": "d"}], "output_layers": 7}}])
def test_a_config_that_does_not_say_leaves_the_count_to_the_worker(folder, config):
    (folder / "model.keras").unlink()
    keras_archive(folder / "model.keras", config)
    assert read_model_folder(str(folder)).labels == ("dark", "bright")


def test_a_config_that_is_no_model_is_one_line(folder):
    (folder / "model.keras").unlink()
    keras_archive(folder / "model.keras", [])
    assert "not a Keras model archive" in one_line_error(folder)


def test_an_h5_model_that_h5py_cannot_read_is_left_to_the_worker(folder):
    (folder / "model.keras").unlink()
    (folder / "model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # HDF5's signature, nothing after it
    assert read_model_folder(str(folder)).model_file == "model.h5"


@pytest.mark.parametrize(("line", "label"), [(1, "a|b"), (2, "x/y"), (3, "c,d"), (2, "\x1b]0;pwned\x07"),
                                             (1, "tab\there"), (3, "csi\x9b31m"), (2, "del\x7f"), (1, "x" * 101),
                                             (2, "..")])
def test_labels_follow_the_rules_of_head_labels(folder, line, label):
    """A model's labels become XMP keywords and CSV cells as a head's do, and reach the terminal: the same
    rule (imgq/labels/names.py), refused in one line naming the file and the line, quoting no control
    character."""
    labels = ["first", "second", "third"]
    labels[line - 1] = label
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    message = one_line_error(folder)
    assert f"{folder / 'labels.txt'}: line {line}: " in message
    assert not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in message)


def test_a_label_separator_of_unicode_is_not_a_line_break(folder):
    """str.splitlines() breaks at \\x1c-\\x1e and \\x85 too: a label holding one is refused at its own line,
    not split in two (which would also shift every line number after it)."""
    (folder / "labels.txt").write_text("dark\nbri\x1eght\n")
    assert f"{folder / 'labels.txt'}: line 2: " in one_line_error(folder)
    (folder / "labels.txt").write_text("  dark \r\nbright\t\r\n\n")  # spaces and CRLF around a name are not its
    assert read_model_folder(str(folder)).labels == ("dark", "bright")
