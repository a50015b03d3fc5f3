"""A built-in model's layers by name, with output shapes, known without TensorFlow.

The tables are Keras' own (``imgq/<model>_layers.json``, generated from ``keras.applications.<Model>(weights=
None)`` in a fresh session; ``tests/test_layers.py`` checks they still match), so the producer can check
``--activations`` names and size a job's dumps before anything is queued. A folder model's layers are known
only to the worker that loads it: for such a model every name is accepted here, and the worker reports a name
its model lacks.
"""

from __future__ import annotations

import difflib
import json
import math
from functools import cache
from importlib import resources

from imgq.models.spec import BUILTIN, DEFAULT_MODEL

DTYPE_BYTES = {"float16": 2, "float32": 4}


class UnknownLayer(ValueError):
    """A layer name that the model does not have."""


@cache
def layer_shapes(model: str = DEFAULT_MODEL) -> dict[str, tuple[int, ...]]:
    """Layer name -> output shape of one image (no batch axis), in the model's order. ``model``: a built-in
    model's name; any other name (a folder model's) has no table here: ``{}``."""
    if model not in BUILTIN:
        return {}
    table = json.loads(resources.files("imgq").joinpath(f"{model}_layers.json").read_text("utf-8"))
    return {name: tuple(shape) for name, shape in table["layers"]}


def shapes_known(model: str = DEFAULT_MODEL) -> bool:
    """True when the producer knows ``model``'s layers (a built-in model)."""
    return model in BUILTIN


def check_layers(names: list[str], model: str = DEFAULT_MODEL) -> tuple[str, ...]:
    """The names, each once, in the model's order (a folder model's: in the order given). Raises UnknownLayer
    suggesting the closest names, for a built-in model."""
    if not shapes_known(model):
        return tuple(dict.fromkeys(names))
    shapes = layer_shapes(model)
    for name in names:
        if name not in shapes:
            close = difflib.get_close_matches(name, shapes, n=3, cutoff=0.5)
            option = "" if model == DEFAULT_MODEL else f" --model {model}"
            hint = f" Did you mean: {', '.join(close)}?" if close else f" See `imgq layers{option}`."
            raise UnknownLayer(f"{BUILTIN[model].constructor} has no layer {name!r}.{hint}")
    return tuple(name for name in shapes if name in set(names))


def dump_bytes(layers: tuple[str, ...], dtype: str, model: str = DEFAULT_MODEL) -> int:
    """Bytes of one image's activations for ``layers`` (before the .npz container's few hundred bytes).

    0 for a folder model, whose layer shapes only its worker knows (``shapes_known`` says which)."""
    shapes = layer_shapes(model)
    return sum(math.prod(shapes[name]) for name in layers if name in shapes) * DTYPE_BYTES[dtype]
