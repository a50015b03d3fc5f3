"""What a weights setting (IMGQ_WEIGHTS, --weights) may say, read without Keras: one reading for the producer,
which refuses a mistake before anything is queued or started, and for the worker, which builds what it says
(worker/runtimes/keras_model.py).

- ``imagenet``: a built-in model's ImageNet weights (Keras' download); for a model folder, its model file's own.
- ``random`` or ``random:SEED``: a built-in model with seeded random weights, for development and tests. SEED is
  a whole number from 0 to 2**32 - 1: keras.utils.set_random_seed seeds numpy's legacy generator, which takes
  no other (``random:-1`` failed deep inside TensorFlow, once the model was being built).
- a file ending in .weights.h5, .h5 or .keras: weights of the model's architecture (or, for a built-in, a whole
  .keras model of 1000 outputs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imgq.models.spec import ModelSpec

IMAGENET, RANDOM, FILE = "imagenet", "random", "file"
MAX_SEED = 2**32 - 1
WEIGHT_FILE_SUFFIXES = (".weights.h5", ".h5", ".keras")
_SEED = re.compile(r"[0-9]{1,10}")  # ASCII digits: int() also takes ' 3', '+3', '3_0' and '٣'
_SHOWN = 80  # characters of a refused value that a message quotes: a line, not a screenful


class WeightsSettingError(ValueError):
    """Weights imgq cannot use, or cannot use with the model; the message is one line, "Expected ... Received:
    ..."."""


@dataclass(frozen=True)
class Weights:
    """A weights setting, read: its ``kind`` (imagenet, random or file), the ``seed`` of random weights, the
    ``path`` of a file."""

    kind: str
    seed: int = 0
    path: str = ""


def parse_weights(text: str) -> Weights:
    """The weights ``text`` says; raises WeightsSettingError."""
    if text == IMAGENET:
        return Weights(IMAGENET)
    if text == RANDOM or text.startswith(RANDOM + ":"):
        return Weights(RANDOM, seed=random_seed(text))
    if text.endswith(WEIGHT_FILE_SUFFIXES):
        return Weights(FILE, path=text)
    raise WeightsSettingError(f"Expected imagenet, random[:SEED] or a weights file ending in "
                              f"{', '.join(WEIGHT_FILE_SUFFIXES)}. Received: {_quoted(text)}")


def random_seed(text: str) -> int:
    """The seed of ``random`` (0) or ``random:SEED``; raises WeightsSettingError unless SEED is a whole number
    from 0 to MAX_SEED, written in ASCII digits."""
    _, colon, seed = text.partition(":")
    if not colon:
        return 0
    if _SEED.fullmatch(seed) and int(seed) <= MAX_SEED:
        return int(seed)
    raise WeightsSettingError(f"Expected random or random:SEED with an integer seed from 0 to {MAX_SEED}. "
                              f"Received: {_quoted(text)}")


def check_weights(spec: ModelSpec, text: str) -> Weights:
    """The weights ``text`` says, when they can go with the model ``spec`` as far as that can be told without
    Keras; raises WeightsSettingError. Random weights are a built-in model's: a model folder carries its own,
    and its architecture with random ones labels nothing. Whether a weights file's layers fit the model only
    Keras tells, in the worker."""
    weights = parse_weights(text)
    if spec.folder is not None and weights.kind == RANDOM:
        raise WeightsSettingError(
            f"Expected imagenet (the weights in {spec.model_path}) or a weights file of its architecture for the "
            f"model folder {spec.folder}: random weights are for built-in models. Received: {_quoted(text)}")
    return weights


def _quoted(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")
