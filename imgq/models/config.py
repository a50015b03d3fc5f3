"""A Keras model's config, read without Keras: what the producer can tell of a model folder's model before
anything is queued, its input shape and its number of outputs (imgq/models/folder.py).

A ``.keras`` file is a zip whose ``config.json`` describes the layers; a ``.h5`` file keeps the same JSON in its
``model_config`` attribute, read with h5py when it is installed (a worker dependency; a producer-only install
leaves the .h5 model to its worker). Both are read from a file already opened under the folder's rules, with a
size cap on the config. Whatever the config does not say plainly (several outputs, a last layer of another
kind, a config of another shape) is left to the worker, which loads the model and checks it
(worker/runtimes/keras_model.py ``check_model``).
"""

from __future__ import annotations

import json
import zipfile
from typing import BinaryIO

from imgq.models.spec import ModelError

MAX_CONFIG_BYTES = 64 * 1024**2  # config.json inside a .keras archive, model_config in a .h5 file
MAX_NESTING = 8  # models inside models followed to the output layer

SHAPE_KEEPING = frozenset({
    "Activation", "Softmax", "ReLU", "LeakyReLU", "ELU", "PReLU", "Dropout", "GaussianDropout", "GaussianNoise",
    "AlphaDropout", "ActivityRegularization", "BatchNormalization", "LayerNormalization", "UnitNormalization",
    "Identity"})
# Layers whose output has the shape of their input: behind one of these, the outputs are those of the layer
# before it (a softmax after the last Dense layer, as Keras' examples end a classifier).


def keras_config(file: BinaryIO, path: str) -> dict:
    """The config.json of the ``.keras`` archive open in ``file``. Raises ModelError (one line naming
    ``path``) for a file that is not a Keras archive, or a config over MAX_CONFIG_BYTES."""
    try:
        with zipfile.ZipFile(file) as archive:
            info = archive.getinfo("config.json")
            if info.file_size > MAX_CONFIG_BYTES:
                raise ModelError(f"{path}: its config.json is {info.file_size} bytes, more than imgq reads.")
            config = json.loads(archive.read(info).decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, json.JSONDecodeError, OSError):
        config = None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: not a Keras model archive; save the model with model.save('model.keras') "
                         f"(Keras 3).")
    return config


def h5_config(file: BinaryIO) -> dict | None:
    """The model_config of the ``.h5`` model open in ``file``, or None: without h5py (a producer-only install),
    and for a file h5py cannot read or that holds no model config (the worker, which loads it with Keras, says
    what is wrong with it)."""
    try:
        import h5py
    except ImportError:
        return None
    try:
        with h5py.File(file, "r") as h5:
            if h5.attrs.get_id("model_config").get_storage_size() > MAX_CONFIG_BYTES:
                return None
            raw = h5.attrs["model_config"]
        config = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
    except (OSError, KeyError, ValueError, TypeError, RuntimeError):  # h5py's errors on a foreign file
        return None
    return config if isinstance(config, dict) else None


def input_shape(config: dict) -> tuple[int, int, int] | None:
    """``(height, width, channels)`` of the model's one input layer; None when the config does not say."""
    layers = _dict(config.get("config")).get("layers")
    shapes = [_dict(layer.get("config")).get("batch_shape") for layer in _layers(layers)
              if layer.get("class_name") == "InputLayer"]
    if len(shapes) != 1 or not isinstance(shapes[0], list) or len(shapes[0]) != 4:
        return None  # the worker, which loads the model, says what is wrong with its inputs
    _, height, width, channels = shapes[0]
    if not all(_count(v) for v in (height, width, channels)):
        return None
    return height, width, channels


def output_units(config: dict, depth: int = 0) -> int | None:
    """The number of outputs of the model ``config`` describes: the units of the Dense layer that makes its
    one output, through layers that keep the shape (SHAPE_KEEPING) and into nested models. None when the
    config does not say so plainly."""
    layers = _layers(_dict(config.get("config")).get("layers"))
    sequential = config.get("class_name") == "Sequential"
    layer = layers[-1] if sequential and layers else _named(layers, _output_name(_dict(config.get("config"))))
    for _ in range(len(layers)):  # at most every layer once: a config naming a circle ends
        if layer is None or depth > MAX_NESTING:
            return None
        if "layers" in _dict(layer.get("config")):  # a model used as a layer: its own output
            return output_units(layer, depth + 1)
        kind = layer.get("class_name")
        if kind == "Dense":
            shape = _called_on(layer)  # Keras 3 records it; a Dense on (None, 7, 7, C) outputs no vector
            units = _dict(layer.get("config")).get("units")
            return units if _count(units) and (shape is None or len(shape) == 2) else None
        if kind not in SHAPE_KEEPING:
            return None
        shape = _called_on(layer)
        if shape is not None:
            return shape[1] if len(shape) == 2 and _count(shape[1]) else None
        layer = _before(layers, layer) if sequential else _named(layers, _source(layer))
    return None


def _output_name(config: dict) -> str | None:
    """The name of a functional model's one output layer: ``["name", 0, 0]`` (Keras 3) or ``[["name", 0, 0]]``
    (and Keras 2's); None for several outputs."""
    outputs = config.get("output_layers")
    if isinstance(outputs, list) and len(outputs) == 1 and isinstance(outputs[0], list):
        outputs = outputs[0]
    if isinstance(outputs, list) and outputs and isinstance(outputs[0], str):
        return outputs[0]
    return None


def _called_on(layer: dict) -> list | None:
    """The shape of the tensor a Keras 3 functional layer was called on (None when the config does not keep
    it: a Sequential's layers, Keras 2's configs)."""
    arguments = _first(_dict(_first(layer.get("inbound_nodes"))).get("args"))
    shape = _dict(_dict(arguments).get("config")).get("shape")
    return shape if isinstance(shape, list) and shape else None


def _source(layer: dict) -> str | None:
    """The name of the layer whose output ``layer`` was called on: Keras 3's ``keras_history``, or Keras 2's
    ``[[["name", 0, 0, {}]]]``."""
    node = _first(layer.get("inbound_nodes"))
    if isinstance(node, dict):
        history = _dict(_dict(_first(node.get("args"))).get("config")).get("keras_history")
        return history[0] if isinstance(history, list) and history and isinstance(history[0], str) else None
    call = _first(node)
    return call[0] if isinstance(call, list) and call and isinstance(call[0], str) else None


def _before(layers: list[dict], layer: dict) -> dict | None:
    """The layer before ``layer`` in a Sequential's list (None for the first)."""
    index = next(i for i, each in enumerate(layers) if each is layer)
    return layers[index - 1] if index else None


def _named(layers: list[dict], name: str | None) -> dict | None:
    if name is None:
        return None
    return next((layer for layer in layers
                 if (layer.get("name") or _dict(layer.get("config")).get("name")) == name), None)


def _layers(value: object) -> list[dict]:
    return [layer for layer in value if isinstance(layer, dict)] if isinstance(value, list) else []


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _first(value: object) -> object:
    return value[0] if isinstance(value, list) and value else None


def _count(value: object) -> bool:
    return type(value) is int and value > 0
