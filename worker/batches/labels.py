"""Top-k decoding as Keras' ``decode_predictions`` does it, with the model's own class names: the vendored
ImageNet class index (imgq/labels/classes.py) for a built-in model, a folder model's labels.txt otherwise."""

from __future__ import annotations

import numpy as np

from imgq.contract import Label
from imgq.labels.classes import NUM_CLASSES, class_index
from imgq.models.spec import ModelSpec


def top_k(probabilities: np.ndarray, k: int, spec: ModelSpec | None = None) -> list[Label]:
    """The ``k`` best classes of one image, best first (at most as many as the model has).

    Same order as ``decode_predictions`` (``argsort()[-k:][::-1]``), ties included. ``spec``: the model
    (None: ResNet50's ImageNet classes). ImageNet models give ``Label(wnid, label, score)``; a user's
    model ``Label("", label, score, index)``.
    """
    classes = NUM_CLASSES if spec is None else len(spec.labels)
    if probabilities.shape != (classes,):
        raise ValueError(f"Expected {classes} class probabilities. Received shape: {probabilities.shape}")
    best = probabilities.argsort()[-k:][::-1]
    if spec is None or spec.wnids is not None:
        names = class_index()
        return [Label(names[i][0], names[i][1], float(probabilities[i])) for i in best]
    return [Label("", spec.labels[i], float(probabilities[i]), int(i)) for i in best]
