"""What runs a model: the contract every runtime (TensorFlow, OpenVINO fp32/bf16) meets.

A runtime is a model loaded with its weights for one precision, ready to classify batches of decoded pixels.
The worker's batch path, the gatherer and auto's measurement use only what ``ModelRuntime`` declares, so a new
runtime (INT8, another device) is one more subclass, not another ``if``. ``tests/test_runtime_contract.py`` runs
one contract test class against every implementation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from imgq.models.spec import ModelSpec
from worker.images.preprocess import Target

WARM_UP_IMAGES = 32
# Images of the warm-up pass (fewer when the batch size is smaller): what a forward pass of a worker with the
# default batch size holds. A warm-up with a full batch, as before, made a worker with --batch-size 1024 run
# 1025 images at every start, minutes on two busy cores, before it took any batch (issue 25.4). Once warm, the
# first pass of another length costs about what a repeat of it does (within 16%, measured: docs/runtime.md,
# "Warm-up"), so a full batch bought nothing.


class ModelRuntime(ABC):
    """A loaded model. Every implementation has these attributes, set when it is built:

    - ``spec``: the ModelSpec it serves (records carry ``spec.id`` as ``model``);
    - ``weights_id``: what records carry as ``weights`` (``random:SEED (untrained ...)`` says so);
    - ``batch_size``: the longest slice one forward pass takes; longer batches are cut into slices;
    - ``precision``: the precision in effect (``fp32``, ``bf16``), never merely the one asked for;
    - ``runtime``: what runs the forward pass, with its version (``openvino 2026.4.1``), named in records;
    - ``load_seconds``: set by the loader once the runtime is warm;
    - ``takes_pixels``: True when ``model_input`` passes uint8 pixels through (the preprocessing is in the
      graph), False when it applies Keras' ``preprocess_input`` of the model's family on the host.
    """

    spec: ModelSpec
    weights_id: str
    batch_size: int
    precision: str
    runtime: str
    load_seconds: float
    takes_pixels: bool

    @property
    def target(self) -> Target:
        """The decoded pixels' shape and how to resize to it (the model's input, from its spec)."""
        return Target.of(self.spec)

    @property
    def job_precision(self) -> str:
        """The precision of the jobs this runtime takes when they ask for one (imgq.contract.PRECISIONS): the
        precision its passes run in, ``precision`` for a runtime that never changes it (an INT8 runtime
        calibrating on its first images says int8 while its first passes are fp32, which their records say)."""
        return self.precision

    @property
    def precision_may_change(self) -> bool:
        """True while ``job_precision`` may still change (worker/queues.py follows it): never, but for an INT8
        runtime calibrating on its first images."""
        return False

    @property
    def model_id(self) -> str:
        """What records carry in ``model`` (ModelSpec.id: a folder model's id includes its file digest)."""
        return self.spec.id

    @abstractmethod
    def model_input(self, pixels: list[np.ndarray]) -> np.ndarray:
        """The batch ``predict`` takes, from decoded uint8 pixels of ``self.target.shape``, one row per image.
        Never changes ``pixels``."""

    @abstractmethod
    def predict_with(self, batch: np.ndarray, layers: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(probabilities (n, classes) float32, {layer: outputs (n, ...)})`` for ``batch`` (what
        ``model_input`` gave), from one forward pass per slice of ``batch_size``: the activations of ``layers``
        come from the same pass as the classification. Rows are in ``batch``'s order; an empty batch gives
        ``(n=0, classes)`` probabilities. A model whose outputs are logits gets a softmax
        (``as_probabilities``). Safe to call from one thread at a time per runtime; raises what the
        runtime raises for a batch it cannot run."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities of shape (n, classes) for ``batch``: ``predict_with`` without layers."""
        return self.predict_with(batch, ())[0]

    @property
    def warm_up_images(self) -> int:
        """How many images ``warm_up``'s pass holds: ``min(batch_size, WARM_UP_IMAGES)``."""
        return max(1, min(self.batch_size, WARM_UP_IMAGES))

    def warming_up(self) -> str:
        """What a worker says before ``warm_up``: ``warming up resnet50 on openvino 2026.4.1 (32 images)``."""
        images = self.warm_up_images
        return f"warming up {self.model_id} on {self.runtime} ({images} image{'' if images == 1 else 's'})"

    def warm_up(self) -> None:
        """Make the runtime ready to serve at the cost of about one real forward pass: ``prepare`` (compile,
        convert if needed), then one pass of ``warm_up_images`` blank images through ``predict``, never a
        full ``batch_size`` batch. May run again (one more such pass). Raises WeightsError (or a kind of it)
        when the model cannot serve."""
        self.prepare()
        blank = np.zeros((self.warm_up_images, *self.target.shape), dtype=np.uint8)
        self.predict(self.model_input(list(blank)))

    @abstractmethod
    def prepare(self) -> None:
        """Whatever must be done once before the first pass, and may fail (OpenVINO's conversion and
        compilation: a .h5 folder model's input size is known only after it). Costs nothing when called
        again. Raises WeightsError (or a kind of it)."""

    def preparing(self) -> str | None:
        """What ``prepare`` will do, when it takes long enough to say (``converting resnet50 to openvino
        ...``), for the worker to say before it begins; None when it is quick (the default)."""
        return None

    def empty_result(self, layers: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """What ``predict_with`` returns for an empty batch."""
        return (np.zeros((0, len(self.spec.labels)), dtype=np.float32), {name: np.zeros((0,)) for name in layers})


def warm(runtime: ModelRuntime, say: Callable[[str], None]) -> None:
    """Warm ``runtime`` up, telling ``say`` each step before it begins: what ``prepare`` does, if it says
    (``preparing``), then ``warming up ...`` (``warming_up``)."""
    if (step := runtime.preparing()) is not None:
        say(step)
        runtime.prepare()
    say(runtime.warming_up())
    runtime.warm_up()


def as_probabilities(outputs: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """``outputs`` as probabilities: a model whose outputs are logits (imgq-model.toml outputs = "logits")
    gets a softmax, in float32, stable for large logits."""
    if spec.outputs != "logits":
        return outputs
    shifted = outputs - outputs.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=1, keepdims=True)


def joined(parts: list[np.ndarray]) -> np.ndarray:
    """The slices of a batch as one array. One slice (the usual case) is returned as it is: copying
    conv1_relu and conv3_block4_out of 32 images (154 MB) cost 0.3 s per pass, 1.41x the pass without dumps
    instead of 1.08x (bench/activations.py)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
