"""Which weights, read and named without Keras, the same way by the producer (which refuses a mistake before
anything is queued or started, and names the weights a job asks for) and by the worker (which builds what the
setting says, and names what it serves in its heartbeat and records).

A weights *setting* (IMGQ_WEIGHTS, ``--weights``) says:

- ``imagenet``: a built-in model's ImageNet weights (Keras' download); for a model folder, its model file's own.
- ``random`` or ``random:SEED``: a built-in model with seeded random weights, for development and tests. SEED is
  a whole number from 0 to 2**32 - 1: keras.utils.set_random_seed seeds numpy's legacy generator, which takes
  no other (``random:-1`` failed deep inside TensorFlow, once the model was being built).
- a file ending in .weights.h5, .h5 or .keras: weights of the model's architecture (or, for a built-in, a whole
  .keras model of 1000 outputs).

Its *key* names the weights themselves, so that two machines agree on it without sharing a path: ``imagenet``;
``random:SEED``; ``file:<file name>:sha256:<first 12 hex of its SHA-256>`` (for a model folder's own weights,
its model file, keyed so). A worker's weights *id* (its heartbeat's, its records') is the key, with
imgq.contract.UNTRAINED_NOTE after random ones; imgq.contract.serves_weights compares an id with a key. No
numpy, no TensorFlow: the producer imports this module.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from imgq.contract import UNTRAINED_NOTE
from imgq.models.spec import ModelSpec

IMAGENET, RANDOM, FILE = "imagenet", "random", "file"
MAX_SEED = 2**32 - 1
WEIGHT_FILE_SUFFIXES = (".weights.h5", ".h5", ".keras")
LOCAL_WEIGHT_SUFFIXES = WEIGHT_FILE_SUFFIXES
_SEED = re.compile(r"[0-9]{1,10}")  # ASCII digits: int() also takes ' 3', '+3', '3_0' and '٣'
_SHOWN = 80  # characters of a refused value that a message quotes: a line, not a screenful


class WeightsSettingError(ValueError):
    """Weights imgq cannot use, or cannot use with the model, or cannot name (a file that is not there); the
    message is one line, "Expected ... Received: ..."."""


WeightsRequestError = WeightsSettingError  # what naming the weights a job asks for raises: the same mistakes


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
            f"model folder {spec.folder} (random weights: random[:SEED] is for built-in models). Received: "
            f"{_quoted(text)}")
    return weights


def weights_key(weights: str, spec: ModelSpec | None = None) -> str:
    """The key of the weights ``weights`` asks for, for the model ``spec`` (None: a built-in, or a model this
    machine knows by name only). A file is hashed; nothing is loaded. Raises WeightsRequestError."""
    folder = spec is not None and spec.folder is not None
    parsed = check_weights(spec, weights) if folder and spec else parse_weights(weights)
    if parsed.kind == IMAGENET:
        return f"file:{spec.model_file}:sha256:{spec.file_digest}" if folder and spec else "imagenet"
    if parsed.kind == RANDOM:
        return f"random:{parsed.seed}"
    if not os.path.isfile(weights):
        raise WeightsRequestError(f"Weights file not found: {weights}")
    return f"file:{os.path.basename(weights)}:sha256:{file_sha256(weights)[:12]}"


def weights_id(weights: str, spec: ModelSpec | None = None) -> str:
    """What a worker loading ``weights`` says it has: the key, and for random weights that their labels mean
    nothing. Raises WeightsRequestError."""
    key = weights_key(weights, spec)
    return key + UNTRAINED_NOTE if key.startswith("random:") else key


def file_sha256(path: str) -> str:
    """The SHA-256 of the file at ``path``, in hex, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _quoted(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")
