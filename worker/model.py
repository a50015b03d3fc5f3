"""ResNet50 as Keras ships it, with its weights, run by TensorFlow (or handed to worker/openvino_runtime.py).

Import this module only in the process that runs the model: TensorFlow is imported here (lazily, inside
functions) and nowhere that the producer (or a Celery parent process that later forks) imports.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from worker.preprocess import TARGET_SIZE, one_line

log = logging.getLogger(__name__)

# TensorFlow's C++ start-up chatter (CPU features, oneDNN notices) is not news to a worker's operator.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

IMAGENET_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
LOCAL_WEIGHT_SUFFIXES = (".weights.h5", ".h5", ".keras")


RUNTIMES = ("openvino", "tensorflow")


class WeightsError(RuntimeError):
    """The requested weights cannot be loaded; the message says what to do instead."""


@dataclass
class Classifier:
    """A loaded model: ``predict`` takes a preprocessed float32 batch and returns class probabilities."""

    model: object
    weights_id: str
    batch_size: int
    precision: str = "fp32"
    load_seconds: float = 0.0
    runtime: str = ""  # "tensorflow 2.x.y": what runs the forward pass, named in every record

    def __post_init__(self):
        if not self.runtime:
            self.runtime = tensorflow_runtime_name()
        self._forwards: dict[tuple[str, ...], object] = {}
        self._forward = self._forward_for(())

    def _forward_for(self, layers: tuple[str, ...]):
        """The compiled forward pass returning the probabilities and the outputs of ``layers``.

        One model with several outputs, built once per distinct layer set and cached: activations come
        from the same pass as the classification, not from a second one.
        """
        if layers not in self._forwards:
            import keras
            import tensorflow as tf

            model = self.model
            if layers:
                model = keras.Model(self.model.input, [self.model.output, *(self.model.get_layer(n).output
                                                                            for n in layers)])
            # One graph, traced once, for any batch length: no retracing and none of model.predict's
            # per-call overhead. A short batch is not padded: on this CPU a batch of 1 runs at ~85% of the
            # per-image speed of a batch of 32 (measured), while padding it would cost 32x.
            signature = [tf.TensorSpec((None, *TARGET_SIZE, 3), tf.float32)]
            self._forwards[layers] = tf.function(lambda x: model(x, training=False), input_signature=signature)
        return self._forwards[layers]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities of shape (n, 1000) for ``batch`` of shape (n, 224, 224, 3), in slices of batch_size."""
        return self.predict_with(batch, ())[0]

    def predict_with(self, batch: np.ndarray, layers: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(probabilities (n, 1000), {layer: outputs (n, ...)})`` from one forward pass per slice."""
        forward = self._forward_for(layers)
        probabilities, activations = [], {name: [] for name in layers}
        for start in range(0, len(batch), self.batch_size):
            out = forward(batch[start:start + self.batch_size])
            outputs = out if layers else [out]
            probabilities.append(outputs[0].numpy())
            for name, value in zip(layers, outputs[1:], strict=True):
                activations[name].append(value.numpy())
        if not probabilities:
            return np.zeros((0, 1000), dtype=np.float32), {name: np.zeros((0,)) for name in layers}
        return _joined(probabilities), {name: _joined(v) for name, v in activations.items()}

    def warm_up(self) -> None:
        """Trace the graph and let oneDNN set up its kernels before the first task, for a full and a
        single-image batch."""
        for n in (self.batch_size, 1):
            self._forward(np.zeros((n, *TARGET_SIZE, 3), dtype=np.float32))


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The slices of a batch as one array. One slice (the usual case) is returned as it is: copying
    conv1_relu and conv3_block4_out of 32 images (154 MB) cost 0.3 s per pass, 1.41x the pass without dumps
    instead of 1.08x (bench/activations.py)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def tensorflow_runtime_name() -> str:
    import tensorflow as tf

    return f"tensorflow {tf.__version__}"


def load_classifier(weights: str, batch_size: int, precision: str = "fp32", runtime: str = "tensorflow",
                    cache_dir: str | None = None):
    """Build ResNet50 with ``weights`` (see ``build_resnet50``) for ``runtime``, compile and warm it up.

    ``precision``: fp32, or bf16 where the CPU supports it (see ``enable_precision``). ``runtime``:
    tensorflow, or openvino (the Keras model converted, the conversion cached under ``cache_dir``; see
    worker/openvino_runtime.py). Raises WeightsError (OpenVINOError, a kind of it, for the runtime).
    """
    started = time.perf_counter()
    if runtime == "openvino":
        from worker.openvino_runtime import load_openvino

        classifier = load_openvino(weights, batch_size, resolve_precision(precision), cache_dir)
    else:
        precision = enable_precision(precision)
        model, weights_id = build_resnet50(weights)
        classifier = Classifier(model, weights_id, batch_size, precision)
    classifier.warm_up()
    classifier.load_seconds = time.perf_counter() - started
    log.info("ResNet50 ready with weights %s, %s on %s, in %.1f s", classifier.weights_id, classifier.precision,
             classifier.runtime, classifier.load_seconds)
    return classifier


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_supports_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU computes bfloat16 natively (AVX512_BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        with open(cpuinfo) as file:
            flags = next((line for line in file if line.startswith("flags")), "").split()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str) -> str:
    """The precision in effect for a requested one: bf16 falls back to fp32, with a warning, on a CPU
    without native bfloat16 (emulated, it would be slower than fp32)."""
    if precision != "bf16":
        return "fp32"
    if not cpu_supports_bf16():
        log.warning("This CPU has no native bfloat16 (%s): running fp32.", " or ".join(BF16_CPU_FLAGS))
        return "fp32"
    return "bf16"


def enable_precision(precision: str) -> str:
    """Turn on oneDNN's automatic bfloat16 mixed precision for the graphs built after this call.

    Weights and inputs stay float32; TensorFlow's grappler rewrites convolutions and matmuls to bfloat16
    where it is numerically safe. Returns the precision in effect (see ``resolve_precision``).
    """
    if resolve_precision(precision) != "bf16":
        return "fp32"
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    return "bf16"


def build_resnet50(weights: str):
    """``(model, weights_id)`` for a weights spec.

    - ``imagenet``: Keras' own download and cache (~/.keras/models).
    - a path to ``.h5`` / ``.weights.h5`` weights, or a whole ``.keras`` model.
    - ``random`` or ``random:SEED``: seeded random weights, for development and tests. Labels made with
      them are meaningless, and the weights id says so.

    Raises WeightsError.
    """
    weights_id = describe_weights(weights)  # a bad spec fails before TensorFlow is imported
    from keras.applications import resnet50

    if weights == "imagenet":
        return _imagenet(resnet50), weights_id
    if weights == "random" or weights.startswith("random:"):
        import keras

        keras.utils.set_random_seed(_random_seed(weights))
        return resnet50.ResNet50(weights=None), weights_id
    return _local_file(resnet50, weights), weights_id


def describe_weights(weights: str) -> str:
    """The weights id of a weights spec, without loading anything (a file is hashed): what records carry
    and what keys the OpenVINO conversion cache. Raises WeightsError for a spec that cannot be loaded."""
    if weights == "imagenet":
        return "imagenet"
    if weights == "random" or weights.startswith("random:"):
        return f"random:{_random_seed(weights)} (untrained: labels are meaningless)"
    if not weights.endswith(LOCAL_WEIGHT_SUFFIXES):
        raise WeightsError(
            f"Expected imagenet, random[:SEED] or a weights file ending in {', '.join(LOCAL_WEIGHT_SUFFIXES)}. "
            f"Received: {weights!r}")
    if not os.path.isfile(weights):
        raise WeightsError(f"Weights file not found: {weights}")
    return f"file:{os.path.basename(weights)}:sha256:{_sha256(weights)[:12]}"


def _imagenet(resnet50):
    try:
        return resnet50.ResNet50(weights="imagenet")
    except Exception as exc:  # URLError, HTTPError, OSError, ...: Keras does not narrow them
        raise WeightsError(
            f"Could not download the ImageNet weights ({one_line(exc, 300)}). "
            f"Download {IMAGENET_WEIGHTS_FILE} on a machine with internet access and set "
            f"IMGQ_WEIGHTS=/path/to/{IMAGENET_WEIGHTS_FILE} (or pass --weights)."
        ) from None


def _random_seed(weights: str) -> int:
    _, _, seed = weights.partition(":")
    try:
        return int(seed or 0)
    except ValueError:
        raise WeightsError(f"Expected random or random:SEED with an integer seed. Received: {weights!r}") from None


def _local_file(resnet50, path: str):
    try:
        if path.endswith(".keras"):
            import keras

            model = keras.saving.load_model(path, compile=False)
        else:
            model = resnet50.ResNet50(weights=path)
    except Exception as exc:  # h5py and Keras raise many kinds for a wrong file
        raise WeightsError(f"Could not load weights from {path}: {one_line(exc)}") from None
    if tuple(model.output_shape) != (None, 1000):
        raise WeightsError(f"Expected a model with 1000 ImageNet outputs. Received output shape: "
                           f"{model.output_shape} from {path}")
    return model


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
