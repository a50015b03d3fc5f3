"""Which model classifies: a built-in keras.applications ImageNet classifier, or a user's model folder.

One definition for both sides, without TensorFlow: the producer checks and routes model names with it, the
worker builds and feeds the model it describes (worker/runtimes/). A model is named by a routing name (a
built-in's name, or a folder model's manifest name or folder name); records carry ``ModelSpec.id``, which
adds the model file's digest for a folder model so that two versions of "defects" are never confused.

A folder model is read by imgq/models/folder.py (labels.txt, imgq-model.toml, the model file's digest), with
the discipline of every file imgq opens: no links out of the folder, regular files only, size caps, no
blocking open.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import dataclass

from imgq.contract import NAME
from imgq.labels.classes import class_index

DEFAULT_MODEL = "resnet50"

PREPROCESSINGS = ("caffe", "tf", "torch", "none")
# How the pixels (0..255, RGB, as Keras' img_to_array gives them) become the model's input, as
# keras.applications.imagenet_utils.preprocess_input's modes do it:
#   caffe: RGB -> BGR, minus the ImageNet mean [103.939, 116.779, 123.68] (BGR), no scaling;
#   tf:    x / 127.5 - 1 (scaled to -1..1);
#   torch: x / 255, minus [0.485, 0.456, 0.406], divided by [0.229, 0.224, 0.225] (RGB);
#   none:  the pixels as they are (0..255, float32), for models that carry their own rescaling layers.
# caffe and torch need 3 channels (Keras' recipe indexes channels 1 and 2): a greyscale model using them is
# refused when its worker starts (worker/runtimes/keras_model.py check_model).

RESIZES = ("squash", "crop")
# squash: Keras' load_img(target_size=...): the whole picture, stretched to the input's size;
# crop:   load_img(target_size=..., keep_aspect_ratio=True): the largest centred box of the input's aspect
#         ratio, then resized (nothing stretched, the edges cut).

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "hamming", "box", "lanczos")
# load_img's interpolations (Pillow's filters); its default, and imgq's, is nearest.

OUTPUTS = ("softmax", "logits")
# softmax: the model's outputs are probabilities (a softmax last layer); logits: raw scores, to which the
# worker applies a softmax, so that every record's score is a probability.


SCORING_FIELDS = ("input_size", "channels", "preprocessing", "resize", "interpolation", "outputs")
# The fields of a ModelSpec that change a score for the same model file and weights (ModelSpec.scoring):
#   input_size, channels, resize, interpolation: the pixels the model sees (worker/images/preprocess.py Target);
#   preprocessing: how those pixels become its input; outputs: whether the worker applies a softmax.
# Left out, on purpose: name (in ModelSpec.id already); folder (moving a folder changes no score); labels and
# wnids (an answer keeps class indexes, named from the current labels.txt when it is read:
# worker/batches/known_batch.py _labels, so renaming a class renames it in old answers too, as a fresh run
# would; a different class count is refused at start against the model's outputs); feature_layer (features
# for embeddings and heads, never the top-k; a head's index is keyed by the head's digest); file_digest and
# model_file (in ModelSpec.id and the weights id).


class ModelError(ValueError):
    """A model name or folder that cannot be used. Its message is one line naming the file (or the name)
    and the fix."""


@dataclass(frozen=True)
class BuiltinModel:
    """A keras.applications ImageNet classifier: how to build it and feed it.

    ``constructor``: the function in ``keras.applications``; ``family``: the module whose
    ``preprocess_input`` is Keras' recipe for it (``keras.applications.<family>``); ``top1``: the ImageNet
    top-1 accuracy Keras publishes for its ImageNet weights, in percent.
    """

    constructor: str
    family: str
    input_size: tuple[int, int]
    preprocessing: str
    feature_layer: str
    top1: float


BUILTIN: dict[str, BuiltinModel] = {
    # ResNet50's recipe is "caffe" (the only one that flips channels). ResNet50V2's is "tf". The three newer
    # families carry their own rescaling inside the model (include_preprocessing=True, Keras' default), so
    # their preprocess_input passes the pixels through: "none".
    "resnet50": BuiltinModel("ResNet50", "resnet50", (224, 224), "caffe", "avg_pool", 74.9),
    "resnet50v2": BuiltinModel("ResNet50V2", "resnet_v2", (224, 224), "tf", "avg_pool", 76.0),
    "efficientnetv2b0": BuiltinModel("EfficientNetV2B0", "efficientnet_v2", (224, 224), "none", "avg_pool", 78.7),
    "efficientnetv2s": BuiltinModel("EfficientNetV2S", "efficientnet_v2", (384, 384), "none", "avg_pool", 83.9),
    "convnexttiny": BuiltinModel("ConvNeXtTiny", "convnext", (224, 224), "none", "convnext_tiny_head_layernorm",
                                 81.3),
    "mobilenetv3large": BuiltinModel("MobileNetV3Large", "mobilenet_v3", (224, 224), "none", "activation_20", 75.6),
}
# feature_layer: the layer whose output feeds the classifier, pooled to one vector per image (embeddings,
# new heads). ConvNeXt normalises its pooled vector before the classifier. MobileNetV3 pools first, then runs
# 1x1 convolutions: its feature layer is the 1280-wide activation before the logits, of shape (1, 1, 1280),
# whose name Keras makes up ("activation_20" in a fresh session: worker/runtimes/keras_model.py builds every built-in
# after
# keras.backend.clear_session(), and tests/test_layers.py pins the name).


@dataclass(frozen=True)
class ModelSpec:
    """Everything about a model that is not its weights: what the worker builds, how it feeds it, what its
    outputs are called.

    ``name``: the routing name (a built-in's name, or the manifest's name or the folder's name);
    ``folder``: the absolute folder of a user's model, None for a built-in; ``labels``: the class names in
    output order; ``wnids``: the WordNet ids of an ImageNet model's classes (None otherwise);
    ``input_size``: (height, width); ``channels``: 1 (greyscale) or 3 (RGB); ``preprocessing``: one of
    PREPROCESSINGS; ``resize``: one of RESIZES; ``interpolation``: one of INTERPOLATIONS; ``outputs``: one of
    OUTPUTS; ``feature_layer``: the pooled layer before the classifier (None: the worker takes the input of
    the last layer); ``file_digest``: the first 12 hex digits of the model file's SHA-256 (folder models).

    A folder model saved as ``.h5`` (whose input the producer cannot read without h5py) has
    ``input_size == (0, 0)`` and ``channels == 0`` unless its manifest gives them: the worker reads them from
    the loaded model (worker/runtimes/keras_model.py ``complete_spec``).
    """

    name: str
    folder: str | None
    labels: tuple[str, ...]
    wnids: tuple[str, ...] | None
    input_size: tuple[int, int]
    channels: int
    preprocessing: str
    resize: str
    interpolation: str
    outputs: str
    feature_layer: str | None
    file_digest: str | None = None
    model_file: str | None = None  # the model file's name in the folder (model.keras or model.h5)

    @property
    def id(self) -> str:
        """What records carry in ``model``: ``resnet50``, or ``<name>@sha256:<12 hex>`` for a folder model."""
        return self.name if self.file_digest is None else f"{self.name}@sha256:{self.file_digest}"

    @property
    def builtin(self) -> BuiltinModel | None:
        """The keras.applications model this is, or None for a folder model."""
        return BUILTIN.get(self.name) if self.folder is None else None

    @property
    def imagenet(self) -> bool:
        """True when the classes are ImageNet's 1000 (records then carry each class's ``wnid``)."""
        return self.wnids is not None

    @property
    def scoring(self) -> dict:
        """The fields that change a score besides the model file and weights (SCORING_FIELDS, with why each
        is in or out)."""
        return {name: getattr(self, name) for name in SCORING_FIELDS}

    @property
    def model_path(self) -> str | None:
        """The model file's absolute path (folder models)."""
        return None if self.folder is None or self.model_file is None else os.path.join(self.folder, self.model_file)


def builtin_spec(name: str) -> ModelSpec:
    """The ModelSpec of a built-in model. Raises ModelError (with the closest names) for an unknown name."""
    model = BUILTIN.get(name)
    if model is None:
        raise ModelError(unknown_name_message(name))
    classes = class_index()
    return ModelSpec(name=name, folder=None, labels=tuple(label for _, label in classes),
                     wnids=tuple(wnid for wnid, _ in classes), input_size=model.input_size, channels=3,
                     preprocessing=model.preprocessing, resize="squash", interpolation="nearest",
                     outputs="softmax", feature_layer=model.feature_layer)


def scoring_digest(spec: ModelSpec, jpeg_draft: bool = True) -> str:
    """What makes a score besides the model id, weights and precision, as 12 hex digits: ``spec.scoring``
    and the decode settings that change pixels; "" when all of it is a built-in's own with the default
    decoding, so that the keys made of it (the known-image index: imgq/results/known.py) stay what they
    were before this digest existed.

    Decode settings: ``jpeg_draft`` (IMGQ_JPEG_DRAFT) decodes a large JPEG at reduced scale and a HEIC from
    its thumbnail (worker/images/preprocess.py): other pixels, other scores. The other decode settings
    (IMGQ_MAX_PIXELS, IMGQ_MAX_FILE_BYTES) only refuse a picture, and a refusal is never kept. The runtime
    (OpenVINO or TensorFlow) is not in it: the two give the same scores to within rounding
    (tests/test_runtime_parity.py), and a key per runtime would split one model's index in two under
    IMGQ_RUNTIME=auto. A folder model always has a digest: its manifest is what it is, no built-in's."""
    builtin = spec.builtin
    if builtin is not None and spec.scoring == builtin_spec(spec.name).scoring and jpeg_draft:
        return ""
    described = {"model": spec.scoring, "jpeg_draft": jpeg_draft}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:12]


def check_model_name(name: str) -> str:
    """``name`` when it can name a model's queue and keys (imgq.contract.NAME: letters, digits, '.', '_', '-',
    at most 64); raises ModelError otherwise."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ModelError(f"Expected a model name of letters, digits, '.', '_' or '-' (at most 64). "
                         f"Received: {name!r}")
    return name


def unknown_name_message(name: str) -> str:
    """One line: ``name`` is no built-in model, the closest names, and how to use a folder instead."""
    close = difflib.get_close_matches(name.lower(), BUILTIN, n=3, cutoff=0.5)
    hint = f"Did you mean: {', '.join(close)}? " if close else ""
    return (f"Unknown model {name!r}. {hint}Built-in models: {', '.join(BUILTIN)}; for your own model give its "
            f"folder (a path, e.g. ./{name}).")
