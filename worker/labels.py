"""Top-k decoding as Keras' ``decode_predictions`` does it, with the vendored class index (imgq/classes.py)."""

from __future__ import annotations

import numpy as np

from imgq.classes import NUM_CLASSES, class_index
from imgq.contract import Label


def top_k(probabilities: np.ndarray, k: int) -> list[Label]:
    """The ``k`` best classes of one image, best first.

    Same order as ``decode_predictions`` (``argsort()[-k:][::-1]``), ties included.
    """
    if probabilities.shape != (NUM_CLASSES,):
        raise ValueError(f"Expected {NUM_CLASSES} class probabilities. Received shape: {probabilities.shape}")
    names = class_index()
    best = probabilities.argsort()[-k:][::-1]
    return [Label(names[i][0], names[i][1], float(probabilities[i])) for i in best]
