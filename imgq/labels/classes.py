"""The 1000 ImageNet classes in Keras' order, vendored: labels never need the network, nor TensorFlow.

Keras downloads ``imagenet_class_index.json`` on first use of ``decode_predictions``; imgq ships the same
file (md5 c2c37ea517e94d9795004a39431a14cb). Workers name the classes they predict with it, and readers of
the results store turn stored class indices back into names.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

NUM_CLASSES = 1000


@cache
def class_index() -> tuple[tuple[str, str], ...]:
    """``(wnid, name)`` for the 1000 classes, in the model's output order."""
    raw = json.loads(resources.files("imgq").joinpath("imagenet_class_index.json").read_text("utf-8"))
    return tuple((raw[str(i)][0], raw[str(i)][1]) for i in range(NUM_CLASSES))


@cache
def class_numbers() -> dict[str, int]:
    """WordNet id -> the class's index in the model's output."""
    return {wnid: i for i, (wnid, _) in enumerate(class_index())}
