"""The model a worker serves (imgq/models.py's ModelSpec), run by TensorFlow (or handed to
worker/openvino_runtime.py): any built-in keras.applications classifier or a user's model folder.

Import this module only in the process that runs the model: TensorFlow is imported here (lazily, inside
functions) and nowhere that the producer (or a Celery parent process that later forks) imports.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from imgq.models import DEFAULT_MODEL, ModelError, ModelSpec, builtin_spec, resolve
from worker.model_build import LOCAL_WEIGHT_SUFFIXES as LOCAL_WEIGHT_SUFFIXES
from worker.model_build import WeightsError, build_model, describe_weights, random_seed, sha256
from worker.preprocess import Target, to_model_input

log = logging.getLogger(__name__)

# TensorFlow's C++ start-up chatter (CPU features, oneDNN notices) is not news to a worker's operator.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

IMAGENET_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"

RUNTIMES = ("openvino", "tensorflow", "auto")


def _resnet50() -> ModelSpec:
    return builtin_spec(DEFAULT_MODEL)


@dataclass
class Classifier:
    """A loaded model: ``model_input`` turns decoded pixels into its input, ``predict`` returns class
    probabilities (a softmax applied to a model whose outputs are logits)."""

    model: object
    weights_id: str
    batch_size: int
    precision: str = "fp32"
    load_seconds: float = 0.0
    runtime: str = ""  # "tensorflow 2.x.y": what runs the forward pass, named in every record
    spec: ModelSpec = field(default_factory=_resnet50)
    takes_pixels = False  # TensorFlow takes the preprocessed float32 batch (OpenVINO: uint8 pixels)

    def __post_init__(self):
        if not self.runtime:
            self.runtime = tensorflow_runtime_name()
        self._forwards: dict[tuple[str, ...], object] = {}
        self._forward = self._forward_for(())

    @property
    def target(self) -> Target:
        return Target.of(self.spec)

    @property
    def model_id(self) -> str:
        """What records carry in ``model`` (imgq.models.ModelSpec.id)."""
        return self.spec.id

    def model_input(self, pixels: list[np.ndarray]) -> np.ndarray:
        """The batch ``predict`` takes, from decoded uint8 pixels of ``self.target.shape``: Keras'
        preprocess_input of the model's family, float32."""
        batch = np.empty((len(pixels), *self.target.shape), dtype=np.float32)
        for row, image in zip(batch, pixels, strict=True):
            to_model_input(image, out=row, preprocessing=self.spec.preprocessing)
        return batch

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
                model = keras.Model(self.model.input, [self.model.output, *(layer_output(self.model, n)
                                                                            for n in layers)])
            # One graph, traced once, for any batch length: no retracing and none of model.predict's
            # per-call overhead. A short batch is not padded: on this CPU a batch of 1 runs at ~85% of the
            # per-image speed of a batch of 32 (measured), while padding it would cost 32x.
            signature = [tf.TensorSpec((None, *self.target.shape), tf.float32)]
            self._forwards[layers] = tf.function(lambda x: model(x, training=False), input_signature=signature)
        return self._forwards[layers]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities of shape (n, classes) for ``batch`` (what ``model_input`` gives), in slices of
        batch_size."""
        return self.predict_with(batch, ())[0]

    def predict_with(self, batch: np.ndarray, layers: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(probabilities (n, classes), {layer: outputs (n, ...)})`` from one forward pass per slice."""
        forward = self._forward_for(layers)
        probabilities, activations = [], {name: [] for name in layers}
        for start in range(0, len(batch), self.batch_size):
            out = forward(batch[start:start + self.batch_size])
            outputs = out if layers else [out]
            probabilities.append(outputs[0].numpy())
            for name, value in zip(layers, outputs[1:], strict=True):
                activations[name].append(value.numpy())
        if not probabilities:
            return (np.zeros((0, len(self.spec.labels)), dtype=np.float32),
                    {name: np.zeros((0,)) for name in layers})
        return as_probabilities(_joined(probabilities), self.spec), {n: _joined(v) for n, v in activations.items()}

    def warm_up(self) -> None:
        """Trace the graph and let oneDNN set up its kernels before the first task, for a full and a
        single-image batch."""
        for n in (self.batch_size, 1):
            self._forward(np.zeros((n, *self.target.shape), dtype=np.float32))


def layer_output(model, name: str):
    """The output tensor of layer ``name`` in ``model``'s graph. The layer feeding the last one is read as
    the last layer's input: right also when it is a nested model (a base model used as a layer, as Keras'
    transfer-learning guide does), whose own ``output`` belongs to its inner graph."""
    if len(model.layers) >= 2 and model.layers[-2].name == name:
        return model.layers[-1].input
    return model.get_layer(name).output


def as_probabilities(outputs: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """``outputs`` as probabilities: a model whose outputs are logits (imgq-model.toml outputs = "logits")
    gets a softmax, in float32, stable for large logits."""
    if spec.outputs != "logits":
        return outputs
    shifted = outputs - outputs.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=1, keepdims=True)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The slices of a batch as one array. One slice (the usual case) is returned as it is: copying
    conv1_relu and conv3_block4_out of 32 images (154 MB) cost 0.3 s per pass, 1.41x the pass without dumps
    instead of 1.08x (bench/activations.py)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def tensorflow_runtime_name() -> str:
    import tensorflow as tf

    return f"tensorflow {tf.__version__}"


def model_spec(model: str | ModelSpec) -> ModelSpec:
    """The ModelSpec of a model setting (a name or folder). Raises WeightsError (one line naming the file
    and the fix) for a name or folder that cannot be used."""
    if isinstance(model, ModelSpec):
        return model
    try:
        return resolve(model)
    except ModelError as exc:
        raise WeightsError(str(exc)) from None


def load_classifier(weights: str, batch_size: int, precision: str = "fp32", runtime: str = "tensorflow",
                    cache_dir: str | None = None, model: str | ModelSpec = DEFAULT_MODEL):
    """Build ``model`` (a built-in name, a model folder, or a ModelSpec) with ``weights`` for ``runtime``,
    compile and warm it up.

    ``precision``: fp32, or bf16 where the CPU supports it (see ``enable_precision``). ``runtime``:
    tensorflow, openvino (the Keras model converted, the conversion cached under ``cache_dir``; see
    worker/openvino_runtime.py), or auto (the faster of the two for this model on this CPU, measured once and
    recorded with the conversion: worker/runtime_choice.py). Raises WeightsError (OpenVINOError, a kind of it,
    for the runtime).
    """
    started = time.perf_counter()
    spec = model_spec(model)
    if runtime == "auto":
        from worker.runtime_choice import auto_classifier

        classifier = auto_classifier(spec, weights, batch_size, resolve_precision(precision), cache_dir)
    elif runtime == "openvino":
        from worker.openvino_runtime import load_openvino

        classifier = load_openvino(weights, batch_size, resolve_precision(precision), cache_dir, spec=spec)
    else:
        precision = enable_precision(precision)
        keras_model, weights_id, spec = build_model(spec, weights)
        classifier = Classifier(keras_model, weights_id, batch_size, precision, spec=spec)
    classifier.warm_up()
    classifier.load_seconds = time.perf_counter() - started
    log.info("%s ready with weights %s, %s on %s, in %.1f s", classifier.model_id, classifier.weights_id,
             classifier.precision, classifier.runtime, classifier.load_seconds)
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
    """``(model, weights_id)``: ResNet50 with a weights spec (see worker/model_build.py ``describe_weights``).

    - ``imagenet``: Keras' own download and cache (~/.keras/models).
    - a path to ``.h5`` / ``.weights.h5`` weights, or a whole ``.keras`` model.
    - ``random`` or ``random:SEED``: seeded random weights, for development and tests. Labels made with
      them are meaningless, and the weights id says so.

    Raises WeightsError.
    """
    model, weights_id, _ = build_model(_resnet50(), weights)
    return model, weights_id


def _sha256(path: str) -> str:
    return sha256(path)


__all__ = ["Classifier", "WeightsError", "build_model", "build_resnet50", "describe_weights", "load_classifier",
           "model_spec", "random_seed"]
