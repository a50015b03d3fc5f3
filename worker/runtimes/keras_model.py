"""Building the Keras model a ModelSpec describes, with its weights, and checking it can serve.

Built-ins are keras.applications constructors; a folder model is its ``model.keras`` loaded with Keras' safe
mode (no Python code runs from the file: a Lambda layer's code is refused) or its ``model.h5`` (Keras' legacy
format, loaded under the same safe mode: its architecture is a JSON config, its Lambda layers are refused;
an .h5 file is still read by h5py, a C library with a larger attack surface than a zip of JSON: prefer
.keras). Every problem of a folder model is one line naming the file and the fix (``check_model``).

Import this module only in the process that runs the model: TensorFlow is imported here, inside functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

from imgq.models import weights as weight_names
from imgq.models.folder import label_count_problem
from imgq.models.resolve import resolve
from imgq.models.spec import BUILTIN, DEFAULT_MODEL, ModelError, ModelSpec, builtin_spec
from imgq.models.weights import FILE, WeightsRequestError, WeightsSettingError, check_weights, parse_weights
from worker.images.preprocess import one_line
from worker.runtimes.model_files import Pinned, pinned_model_file, pinned_weights_file

IMAGENET_WEIGHTS_FILES = {"resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
                          "resnet50v2": "resnet50v2_weights_tf_dim_ordering_tf_kernels.h5"}


class WeightsError(RuntimeError):
    """The requested model or weights cannot be loaded; the message (one line a problem) says what to do."""


def weights_kind(weights: str) -> str:
    """``imagenet``, ``random`` or ``file``: what a weights spec names (imgq/models/weights.py). Raises
    WeightsError for a spec that names none of them (or a bad seed), without reading anything."""
    try:
        return parse_weights(weights).kind
    except WeightsSettingError as exc:
        raise WeightsError(str(exc)) from None


def describe_weights(weights: str, spec: ModelSpec | None = None, digest: str | None = None) -> str:
    """The weights id of a weights spec, without loading anything: what records and the heartbeat carry, what
    keys the OpenVINO conversion cache, and what the jobs asking for these weights name (imgq/models/weights.py,
    shared with the producer, whose check this is too). For a folder model, ``imagenet`` (the default) stands for
    the model file's own weights. A weights file is hashed there, unless ``digest`` (its SHA-256, hex) says what
    its bytes were when they were read for loading (``build_model``). Raises WeightsError for a spec that
    cannot be loaded, or not with ``spec``."""
    try:
        read = parse_weights(weights) if spec is None else check_weights(spec, weights)
    except WeightsSettingError as exc:
        raise WeightsError(str(exc)) from None
    if read.kind == FILE and digest is not None:
        return f"file:{os.path.basename(weights)}:sha256:{digest[:12]}"
    try:
        return weight_names.weights_id(weights, spec)
    except WeightsRequestError as exc:
        raise WeightsError(str(exc)) from None


def build_model(spec: ModelSpec, weights: str):
    """``(keras model, weights_id, spec)`` for ``spec`` with ``weights``; the spec completed from the loaded
    model (a .h5 folder model's input size). Raises WeightsError.

    Each file is read once: the model file and a weights file are hashed as they are copied into a folder of
    this process's own, and Keras loads the copies (worker/runtimes/model_files.py), so that the ids the model
    is served under (``spec.id``, the weights id) are those of the bytes it runs. A folder model's file whose
    bytes are no longer those ``spec`` was read from (replaced since) is refused.
    """
    is_file = weights_kind(weights) == "file"  # a bad spec fails before TensorFlow is imported
    with _one_line(), (pinned_weights_file(weights) if is_file else contextlib.nullcontext()) as weights_copy:
        weights_id = describe_weights(weights, spec, weights_copy.sha256 if weights_copy else None)
        if spec.folder is None:
            model = _builtin(spec, weights, weights_copy)
        else:
            model = _folder_model(spec, weights, weights_copy)
    spec = complete_spec(spec, model)
    check_model(spec, model)
    return model, weights_id, spec


@contextlib.contextmanager
def _one_line() -> Iterator[None]:
    """A file's problem (a ModelError of worker/runtimes/model_files.py) as the WeightsError that stops a
    worker with one line."""
    try:
        yield
    except ModelError as exc:
        raise WeightsError(str(exc)) from None


def _builtin(spec: ModelSpec, weights: str, weights_copy: Pinned | None):
    """The built-in model; ``weights_copy``: the private copy of a weights file (``weights`` names it)."""
    import keras

    builtin = BUILTIN[spec.name]
    constructor = getattr(keras.applications, builtin.constructor)
    # A fresh session: layer names Keras makes up (MobileNetV3's "activation_20") are those of imgq's tables.
    keras.backend.clear_session()
    shape = {"input_shape": (*builtin.input_size, 3)}
    if weights == "imagenet":
        try:
            return constructor(weights="imagenet", **shape)
        except Exception as exc:  # URLError, HTTPError, OSError, ...: Keras does not narrow them
            file = IMAGENET_WEIGHTS_FILES.get(spec.name, "that/file")
            raise WeightsError(
                f"Could not download the ImageNet weights of {spec.name} ({one_line(exc, 300)}). Download "
                f"them on a machine with internet access (keras.applications.{builtin.constructor}"
                f"(weights='imagenet') saves them in ~/.keras/models) and set IMGQ_WEIGHTS=/path/to/{file} "
                f"(or pass --weights).") from None
    if weights_copy is None:  # random[:SEED]
        keras.utils.set_random_seed(random_seed(weights))
        return constructor(weights=None, **shape)
    try:
        if weights.endswith(".keras"):
            model = keras.saving.load_model(weights_copy.path, compile=False, safe_mode=True)
        else:
            model = constructor(weights=weights_copy.path, **shape)
    except Exception as exc:  # h5py and Keras raise many kinds for a wrong file
        raise WeightsError(f"Could not load weights from {weights}: {_named(exc, weights_copy, weights)}") from None
    if tuple(model.output_shape) != (None, 1000):
        raise WeightsError(f"Expected a model with 1000 ImageNet outputs. Received output shape: "
                           f"{model.output_shape} from {weights}")
    return model


def _folder_model(spec: ModelSpec, weights: str, weights_copy: Pinned | None):
    """A folder model loaded from the private copy of its file (refused when that file changed since
    ``spec`` was read), with ``weights_copy`` (a weights file's copy) loaded into it if given."""
    import keras

    path = spec.model_path
    if weights_copy is None and weights != "imagenet":  # random[:SEED]
        raise WeightsError(f"IMGQ_WEIGHTS={weights} is for built-in models; {path} carries its own weights "
                           f"(or give a .weights.h5 file of the same architecture).")
    with _one_line(), pinned_model_file(spec) as model_copy:
        try:
            model = keras.saving.load_model(model_copy.path, compile=False, safe_mode=True)
        except Exception as exc:
            raise WeightsError(f"{path}: Keras cannot load it ({_named(exc, model_copy, path, 300)}); save the "
                               f"model with model.save('model.keras') in Keras 3, without Lambda layers.") from None
    if weights_copy is not None:
        try:
            model.load_weights(weights_copy.path)
        except Exception as exc:
            raise WeightsError(f"Could not load weights from {weights} into {path}: "
                               f"{_named(exc, weights_copy, weights)}") from None
    return _functional(model)


def _named(exc: BaseException, copy: Pinned, original: str | None, limit: int = 200) -> str:
    """``exc`` in one line of at most ``limit``, naming the user's file where Keras named the private copy
    it read."""
    return one_line(exc, 1 << 16).replace(copy.path, original or copy.path)[:limit]


def _functional(model):
    """A Sequential model as a functional one of the same layers (and weights): a loaded Sequential may have
    no symbolic ``output`` ("never been called"), which activations, embeddings and the OpenVINO conversion
    need. Other models are returned as they are."""
    import keras

    if not isinstance(model, keras.Sequential):
        return model
    shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if shape is None:
        return model  # check_model says what is missing
    inputs = x = keras.Input(shape)
    for layer in model.layers:
        x = layer(x)
    return keras.Model(inputs, x, name=model.name)


def complete_spec(spec: ModelSpec, model) -> ModelSpec:
    """``spec`` with what only the loaded model tells: its input size and channels (a .h5 folder model) and
    its feature layer (the layer feeding the last one, unless the manifest names one)."""
    changes: dict = {}
    shape = _input_shape(model)
    if spec.folder is not None and shape is not None and spec.input_size == (0, 0):
        changes.update(input_size=(shape[0], shape[1]), channels=shape[2])
    if spec.feature_layer is None and len(model.layers) >= 2:
        changes["feature_layer"] = model.layers[-2].name
    return dataclasses.replace(spec, **changes) if changes else spec


def _input_shape(model) -> tuple | None:
    inputs = model.inputs if isinstance(model.inputs, (list, tuple)) else [model.inputs]
    if len(inputs) != 1:
        return None
    shape = tuple(inputs[0].shape)
    return shape[1:] if len(shape) == 4 else None


def check_model(spec: ModelSpec, model) -> None:
    """Raise WeightsError with one line for each reason ``model`` cannot serve ``spec``: several inputs or
    outputs, an input that is not an image (height, width, 1 or 3 channels), an image size left open, a
    label count other than the outputs, a preprocessing that needs 3 channels on a greyscale input."""
    where = spec.model_path or spec.name
    problems = []
    inputs = model.inputs if isinstance(model.inputs, (list, tuple)) else [model.inputs]
    outputs = model.outputs if isinstance(model.outputs, (list, tuple)) else [model.outputs]
    if len(inputs) != 1:
        problems.append(f"{where}: {len(inputs)} inputs; imgq feeds a model one image input (height, width, "
                        f"channels).")
    if len(outputs) != 1:
        problems.append(f"{where}: {len(outputs)} outputs; imgq reads one output of class scores.")
    if len(inputs) == 1:
        shape = tuple(inputs[0].shape)
        if len(shape) != 4 or shape[3] not in (1, 3):
            problems.append(f"{where}: input shape {shape} is not an image; expected (None, height, width, 1 or "
                            f"3) (channels last).")
        elif shape[1] is None or shape[2] is None:
            problems.append(f"{where}: input shape {shape} leaves the image size open; build the model with "
                            f"keras.Input((height, width, {shape[3]})).")
        elif spec.folder is not None and (shape[1], shape[2], shape[3]) != (*spec.input_size, spec.channels):
            problems.append(f"{where}: input shape {shape} differs from what its config says; save it again.")
        elif shape[3] == 1 and spec.preprocessing in ("caffe", "torch"):
            problems.append(f"{where}: preprocessing {spec.preprocessing!r} needs 3 channels (Keras' recipe fails on "
                            f"1); set preprocessing = \"none\" or \"tf\" in imgq-model.toml.")
    if len(outputs) == 1:
        shape = tuple(outputs[0].shape)
        if len(shape) != 2:
            problems.append(f"{where}: output shape {shape}; expected (None, classes): add a Flatten or pooling "
                            f"before the last Dense layer.")
        elif (problem := label_count_problem(spec, shape[1])) is not None:  # as the producer checks the config
            problems.append(problem)
    if problems:
        raise WeightsError("\n".join(problems))


MAX_SEED = 2**32 - 1  # Keras (and NumPy's legacy generator) take seeds from 0 to this


def random_seed(weights: str) -> int:
    """The seed of ``random`` or ``random:SEED``. Raises WeightsError."""
    try:
        return weight_names.random_seed(weights)
    except WeightsRequestError as exc:
        raise WeightsError(str(exc)) from None


def model_spec(model: str | ModelSpec) -> ModelSpec:
    """The ModelSpec of a model setting (a name or folder). Raises WeightsError (one line naming the file
    and the fix) for a name or folder that cannot be used."""
    if isinstance(model, ModelSpec):
        return model
    try:
        return resolve(model)
    except ModelError as exc:
        raise WeightsError(str(exc)) from None


def layer_output(model, name: str):
    """The output tensor of layer ``name`` in ``model``'s graph. The layer feeding the last one is read as
    the last layer's input: right also when it is a nested model (a base model used as a layer, as Keras'
    transfer-learning guide does), whose own ``output`` belongs to its inner graph."""
    if len(model.layers) >= 2 and model.layers[-2].name == name:
        return model.layers[-1].input
    return model.get_layer(name).output


def build_resnet50(weights: str):
    """``(model, weights_id)``: ResNet50 with a weights spec (see ``describe_weights``).

    - ``imagenet``: Keras' own download and cache (~/.keras/models).
    - a path to ``.h5`` / ``.weights.h5`` weights, or a whole ``.keras`` model.
    - ``random`` or ``random:SEED``: seeded random weights, for development and tests. Labels made with
      them are meaningless, and the weights id says so.

    Raises WeightsError.
    """
    model, weights_id, _ = build_model(builtin_spec(DEFAULT_MODEL), weights)
    return model, weights_id
