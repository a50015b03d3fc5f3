"""ResNet50's layers by name, with output shapes, known without TensorFlow.

The table is Keras' own (``imgq/resnet50_layers.json``, generated from ``ResNet50(weights=None)``;
``tests/test_layers.py`` checks it still matches), so the producer can check ``--activations`` names and
size a job's dumps before anything is queued.
"""

from __future__ import annotations

import difflib
import json
import math
from functools import cache
from importlib import resources

DTYPE_BYTES = {"float16": 2, "float32": 4}


class UnknownLayer(ValueError):
    """A layer name that ResNet50 does not have."""


@cache
def layer_shapes() -> dict[str, tuple[int, ...]]:
    """Layer name -> output shape of one image (no batch axis), in the model's order."""
    table = json.loads(resources.files("imgq").joinpath("resnet50_layers.json").read_text("utf-8"))
    return {name: tuple(shape) for name, shape in table["layers"]}


def check_layers(names: list[str]) -> tuple[str, ...]:
    """The names, each once, in the model's order. Raises UnknownLayer suggesting the closest names."""
    shapes = layer_shapes()
    for name in names:
        if name not in shapes:
            close = difflib.get_close_matches(name, shapes, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else " See `imgq layers`."
            raise UnknownLayer(f"ResNet50 has no layer {name!r}.{hint}")
    return tuple(name for name in shapes if name in set(names))


def dump_bytes(layers: tuple[str, ...], dtype: str) -> int:
    """Bytes of one image's activations for ``layers`` (before the .npz container's few hundred bytes)."""
    shapes = layer_shapes()
    return sum(math.prod(shapes[name]) for name in layers) * DTYPE_BYTES[dtype]
