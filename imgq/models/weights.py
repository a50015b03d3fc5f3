"""Which weights: named without loading them, the same way by the producer (what a job asks for) and by the worker
(what it serves, what its records carry).

A weights *request* is what a user gives (IMGQ_WEIGHTS, ``--weights``): ``imagenet``, ``random[:SEED]`` or a weights
file. Its *key* names the weights themselves, so that two machines agree on it without sharing a path:

- ``imagenet``: Keras' ImageNet weights of a built-in model; for a model folder, ``imagenet`` (the default)
  stands for the weights in its model file, keyed as that file: ``file:model.keras:sha256:<12 hex>``;
- ``random:SEED`` (``random`` is ``random:0``): seeded random weights, for development and tests;
- ``file:<file name>:sha256:<first 12 hex of its SHA-256>``: a ``.h5``, ``.weights.h5`` or ``.keras`` file,
  hashed here (the producer has no TensorFlow, and needs none to hash a file).

A worker's weights *id* (its heartbeat's, its records') is the key, with imgq.contract.UNTRAINED_NOTE after
random ones; imgq.contract.serves_weights compares an id with a key. No numpy, no TensorFlow: the producer
imports this module.
"""

from __future__ import annotations

import hashlib
import os

from imgq.contract import UNTRAINED_NOTE
from imgq.models.spec import ModelSpec

LOCAL_WEIGHT_SUFFIXES = (".weights.h5", ".h5", ".keras")


class WeightsRequestError(ValueError):
    """Weights that cannot be named: a request of no known form, a file that is not there, random weights for a
    model folder. The message is one line saying what is expected."""


def weights_key(weights: str, spec: ModelSpec | None = None) -> str:
    """The key of the weights ``weights`` asks for, for the model ``spec`` (None: a built-in, or a model this
    machine knows by name only). A file is hashed; nothing is loaded. Raises WeightsRequestError."""
    folder = spec is not None and spec.folder is not None
    if weights == "imagenet":
        return f"file:{spec.model_file}:sha256:{spec.file_digest}" if folder and spec else "imagenet"
    if weights == "random" or weights.startswith("random:"):
        if folder and spec:
            raise WeightsRequestError(f"IMGQ_WEIGHTS={weights} is for built-in models; {spec.model_path} carries its "
                                      f"own weights (or give a .weights.h5 file of the same architecture).")
        return f"random:{random_seed(weights)}"
    if not weights.endswith(LOCAL_WEIGHT_SUFFIXES):
        raise WeightsRequestError(
            f"Expected imagenet, random[:SEED] or a weights file ending in {', '.join(LOCAL_WEIGHT_SUFFIXES)}. "
            f"Received: {weights!r}")
    if not os.path.isfile(weights):
        raise WeightsRequestError(f"Weights file not found: {weights}")
    return f"file:{os.path.basename(weights)}:sha256:{file_sha256(weights)[:12]}"


def weights_id(weights: str, spec: ModelSpec | None = None) -> str:
    """What a worker loading ``weights`` says it has: the key, and for random weights that their labels mean
    nothing. Raises WeightsRequestError."""
    key = weights_key(weights, spec)
    return key + UNTRAINED_NOTE if key.startswith("random:") else key


def random_seed(weights: str) -> int:
    """The seed of ``random`` (0) or ``random:SEED``. Raises WeightsRequestError."""
    _, _, seed = weights.partition(":")
    try:
        return int(seed or 0)
    except ValueError:
        raise WeightsRequestError(f"Expected random or random:SEED with an integer seed. "
                                  f"Received: {weights!r}") from None


def file_sha256(path: str) -> str:
    """The SHA-256 of the file at ``path``, in hex, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
