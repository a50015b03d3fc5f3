"""ImageNet class names, vendored, and top-k decoding as Keras' ``decode_predictions`` does it.

Keras downloads ``imagenet_class_index.json`` on first use; imgq ships the same file (md5
c2c37ea517e94d9795004a39431a14cb) so decoding never needs the network.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import numpy as np

NUM_CLASSES = 1000


@cache
def class_index() -> tuple[tuple[str, str], ...]:
    """``(wnid, name)`` for the 1000 classes, in the model's output order."""
    raw = json.loads(resources.files("worker").joinpath("imagenet_class_index.json").read_text("utf-8"))
    return tuple((raw[str(i)][0], raw[str(i)][1]) for i in range(NUM_CLASSES))


def top_k(probabilities: np.ndarray, k: int) -> list[dict]:
    """The ``k`` best classes of one image, best first: ``[{wnid, label, score}]``.

    Same order as ``decode_predictions`` (``argsort()[-k:][::-1]``), ties included.
    """
    if probabilities.shape != (NUM_CLASSES,):
        raise ValueError(f"Expected {NUM_CLASSES} class probabilities. Received shape: {probabilities.shape}")
    names = class_index()
    best = probabilities.argsort()[-k:][::-1]
    return [{"wnid": names[i][0], "label": names[i][1], "score": float(probabilities[i])} for i in best]
