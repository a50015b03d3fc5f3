"""A model run by TensorFlow: the Keras model itself, its forward pass traced once as a tf.function.

Import this module only in the process that runs the model: TensorFlow is imported here (lazily, inside
functions) and nowhere that the producer (or a Celery parent process that later forks) imports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from imgq.models.spec import DEFAULT_MODEL, ModelSpec, builtin_spec
from worker.images.preprocess import to_model_input
from worker.runtimes.base import ModelRuntime, as_probabilities, joined
from worker.runtimes.keras_model import layer_output

# TensorFlow's C++ start-up chatter (CPU features, oneDNN notices) is not news to a worker's operator.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _default_spec() -> ModelSpec:
    return builtin_spec(DEFAULT_MODEL)


@dataclass
class Classifier(ModelRuntime):
    """A Keras model on TensorFlow (see ModelRuntime for the contract). ``model_input`` applies Keras'
    preprocess_input of the model's family on the host, in float32."""

    model: object
    weights_id: str
    batch_size: int
    precision: str = "fp32"
    load_seconds: float = 0.0
    runtime: str = ""  # "tensorflow 2.x.y": what runs the forward pass, named in every record
    spec: ModelSpec = field(default_factory=_default_spec)
    takes_pixels = False  # TensorFlow takes the preprocessed float32 batch (OpenVINO: uint8 pixels)

    def __post_init__(self):
        if not self.runtime:
            self.runtime = tensorflow_runtime_name()
        self._forwards: dict[tuple[str, ...], object] = {}
        self._forward = self._forward_for(())

    def model_input(self, pixels: list[np.ndarray]) -> np.ndarray:
        """Keras' preprocess_input of the model's family, float32, one row per image."""
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

    def predict_with(self, batch: np.ndarray, layers: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        forward = self._forward_for(layers)
        probabilities, activations = [], {name: [] for name in layers}
        for start in range(0, len(batch), self.batch_size):
            out = forward(batch[start:start + self.batch_size])
            outputs = out if layers else [out]
            probabilities.append(outputs[0].numpy())
            for name, value in zip(layers, outputs[1:], strict=True):
                activations[name].append(value.numpy())
        if not probabilities:
            return self.empty_result(layers)
        return as_probabilities(joined(probabilities), self.spec), {n: joined(v) for n, v in activations.items()}

    def prepare(self) -> None:
        """Nothing: the graph is traced, and oneDNN sets up its kernels, at the first pass (warm_up's)."""


def tensorflow_runtime_name() -> str:
    import tensorflow as tf

    return f"tensorflow {tf.__version__}"
