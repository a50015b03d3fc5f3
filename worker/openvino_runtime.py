"""ResNet50 on OpenVINO: the Keras model converted once, cached on disk, compiled once per layer set.

Keras still defines the model and loads every kind of weights (worker/model.py); OpenVINO only runs it.
On this CPU the same graph runs ~2x faster in fp32 and ~4x in bf16 than under TensorFlow (docs/runtime.md,
BENCHMARKS.md). The conversion (TensorFlow import, Keras build, ov.convert_model: ~6 s) is done once per
weights, output layers and OpenVINO version, and saved under ``<state_dir>/openvino``: a worker that finds
its conversion there never imports TensorFlow at all and is ready in about two seconds.

The interface is worker/model.py's ``Classifier``'s (``predict_with``, ``warm_up``, ``weights_id``,
``precision``, ``runtime``), so that the gatherer, the batch pipeline and the activation dumps run unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass, field

import numpy as np

from worker.model import WeightsError, build_resnet50, describe_weights
from worker.preprocess import TARGET_SIZE, one_line

log = logging.getLogger(__name__)

PROBABILITIES = "probabilities"  # the converted model's output name for the class probabilities
INPUT_SHAPE = [-1, *TARGET_SIZE, 3]  # any batch length: a short batch runs as it is, never padded
PERFORMANCE_HINT = "LATENCY"
# One inference stream using every core, for one synchronous request at a time: what worker/gather.py
# sends. THROUGHPUT (one stream per core, requests in parallel) measured slower here, since the gatherer
# has only one batch ready at a time and decoding needs the cores between passes (docs/runtime.md).

FALLBACK = "IMGQ_RUNTIME=tensorflow (or `imgq worker --runtime tensorflow`) runs the model on TensorFlow instead"


class OpenVINOError(WeightsError):
    """OpenVINO cannot run the model here (not installed, conversion or compilation failed). A kind of
    WeightsError, so that the worker stops with one line before taking any batch; the message names the
    TensorFlow runtime as the way out."""


def openvino_version() -> str:
    """``2026.4.1``: the installed OpenVINO's release, without its build suffix."""
    import openvino as ov

    return ov.get_version().split("-")[0]


def _package_version(*names: str) -> str:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def cache_key(weights_id: str, layers: tuple[str, ...], ov_version: str) -> str:
    """The conversion cache's folder name for a model. Keras' version is in it too: ``random:SEED``
    weights are only the same weights under the same Keras."""
    parts = [weights_id, list(layers), ov_version, _package_version("keras")]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


@dataclass
class OpenVINOClassifier:
    """ResNet50 with ``weights`` compiled by OpenVINO for ``precision`` (fp32 or bf16) on ``device``.

    ``cache_dir``: where conversions are kept (None: nowhere, convert at every start). ``threads``: 0 lets
    OpenVINO use every core.
    """

    weights: str
    batch_size: int
    precision: str = "fp32"
    cache_dir: str | None = None
    device: str = "CPU"
    threads: int = 0
    weights_id: str = ""
    load_seconds: float = 0.0
    runtime: str = ""
    converted: list[tuple[str, ...]] = field(default_factory=list)  # layer sets this process converted
    _keras_model: object = None

    def __post_init__(self):
        try:
            import openvino as ov
        except ImportError as exc:
            raise OpenVINOError(f"OpenVINO is not installed ({one_line(exc)}): pip install openvino, "
                                f"or {FALLBACK}.") from None
        self.weights_id = self.weights_id or describe_weights(self.weights)
        self.runtime = f"openvino {openvino_version()}"
        self._core = ov.Core()
        self._compiled: dict[tuple[str, ...], tuple[object, object]] = {}
        self._lock = threading.Lock()  # an infer request serves one call at a time

    @property
    def config(self) -> dict:
        """compile_model's properties. f32 is asked for explicitly: on a CPU with AMX, OpenVINO's default
        inference precision is bf16."""
        config = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": PERFORMANCE_HINT}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        return config

    def _compiled_for(self, layers: tuple[str, ...]):
        """``(compiled model, infer request)`` returning the probabilities and ``layers``' outputs: one
        model with several outputs per distinct layer set, so that activations come from the same pass."""
        if layers not in self._compiled:
            model = self._read_or_convert(layers)
            try:
                compiled = self._core.compile_model(model, self.device, self.config)
            except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line report
                raise OpenVINOError(f"OpenVINO could not compile the model for {self.device} "
                                    f"({one_line(exc, 300)}); {FALLBACK}.") from None
            self._compiled[layers] = (compiled, compiled.create_infer_request())
        return self._compiled[layers]

    def _read_or_convert(self, layers: tuple[str, ...]):
        path = self._cache_path(layers)
        if path and os.path.isfile(path):
            try:
                return self._core.read_model(path)
            except Exception as exc:  # a damaged cache entry is converted again, not fatal
                log.warning("Converting again: cannot read the cached OpenVINO model %s (%s)", path, one_line(exc))
        model = self._convert(layers)
        if path:
            self._save(model, path)
        return model

    def _cache_path(self, layers: tuple[str, ...]) -> str | None:
        if not self.cache_dir:
            return None
        return os.path.join(self.cache_dir, cache_key(self.weights_id, layers, openvino_version()), "model.xml")

    def _convert(self, layers: tuple[str, ...]):
        """The Keras model (built on first need: TensorFlow is imported only here) as an OpenVINO model."""
        import openvino as ov

        if self._keras_model is None:
            try:
                self._keras_model, _ = build_resnet50(self.weights)
            except ImportError as exc:  # the Dockerfile's openvino image: no TensorFlow, conversions baked in
                raise OpenVINOError(
                    f"No conversion of the model with weights {self.weights_id} (outputs "
                    f"{', '.join((PROBABILITIES, *layers))}) is cached in {self.cache_dir}, and making one needs "
                    f"TensorFlow, which is missing here ({one_line(exc)}). In the openvino image, use the weights "
                    "it was built with (OPENVINO_WEIGHTS) and no --activations, or run the full image.") from None
        try:
            model = ov.convert_model(_keras_function(self._keras_model, layers), input=[INPUT_SHAPE])
        except Exception as exc:
            raise OpenVINOError(f"OpenVINO could not convert the model with weights {self.weights_id} "
                                f"({one_line(exc, 300)}); {FALLBACK}.") from None
        self.converted.append(layers)
        log.info("Converted ResNet50 (weights %s, outputs %s) to OpenVINO", self.weights_id,
                 ", ".join((PROBABILITIES, *layers)))
        return model

    def _save(self, model, path: str) -> None:
        """Write the conversion to a temporary folder, then rename it into place: a worker starting at the
        same time sees a whole conversion or none. Failing to cache costs the next start time, not this one."""
        import openvino as ov

        folder = os.path.dirname(path)
        partial = f"{folder}.partial-{os.getpid()}-{threading.get_ident()}"
        try:
            os.makedirs(partial, exist_ok=True)
            ov.save_model(model, os.path.join(partial, "model.xml"), compress_to_fp16=False)
            with open(os.path.join(partial, "about.json"), "w") as file:
                json.dump({"weights": self.weights_id, "openvino": openvino_version()}, file)
            os.replace(partial, folder)
        except OSError as exc:  # read-only or full state dir; or another worker renamed its copy first
            log.warning("OpenVINO conversion not cached in %s: %s", folder, exc.strerror or exc)
            shutil.rmtree(partial, ignore_errors=True)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities of shape (n, 1000) for ``batch`` of shape (n, 224, 224, 3), in slices of batch_size."""
        return self.predict_with(batch, ())[0]

    def predict_with(self, batch: np.ndarray, layers: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(probabilities (n, 1000), {layer: outputs (n, ...)})`` from one forward pass per slice."""
        compiled, request = self._compiled_for(layers)
        ports = [compiled.output(name) for name in (PROBABILITIES, *layers)]
        parts: list[list[np.ndarray]] = [[] for _ in ports]
        with self._lock:
            for start in range(0, len(batch), self.batch_size):
                chunk = np.ascontiguousarray(batch[start:start + self.batch_size], dtype=np.float32)
                # share_inputs: the slice is read in place; outputs are copied (the next pass reuses them)
                result = request.infer({0: chunk}, share_inputs=True)
                for part, port in zip(parts, ports, strict=True):
                    part.append(result[port])
        if not parts[0]:
            return np.zeros((0, 1000), dtype=np.float32), {name: np.zeros((0,)) for name in layers}
        joined = [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]
        return joined[0], dict(zip(layers, joined[1:], strict=True))

    def warm_up(self) -> None:
        """Compile (converting if not cached) and run a full and a single-image batch before the first task."""
        for n in (self.batch_size, 1):
            self.predict(np.zeros((n, *TARGET_SIZE, 3), dtype=np.float32))


def _keras_function(model, layers: tuple[str, ...]):
    """A tf.function over any batch length whose outputs are named: the probabilities and each layer."""
    import keras
    import tensorflow as tf

    outputs = {PROBABILITIES: model.output, **{name: model.get_layer(name).output for name in layers}}
    multi = keras.Model(model.input, outputs)
    signature = [tf.TensorSpec((None, *TARGET_SIZE, 3), tf.float32)]
    return tf.function(lambda x: multi(x, training=False), input_signature=signature)


def load_openvino(weights: str, batch_size: int, precision: str, cache_dir: str | None,
                  threads: int = 0) -> OpenVINOClassifier:
    """An OpenVINOClassifier, not yet warmed up. ``precision`` is the one in effect (see
    worker.model.resolve_precision). Raises WeightsError, OpenVINOError."""
    return OpenVINOClassifier(weights, batch_size, precision, cache_dir, threads=threads)
