"""Any model on OpenVINO: the Keras model converted once, cached on disk, compiled once per layer set.

Keras still defines the model and loads every kind of weights (worker/runtimes/keras_model.py); OpenVINO only runs it.
The same graph runs faster than under TensorFlow on CPUs (the measured figures, with their machine: BENCHMARKS.md,
"OpenVINO's speed-up"); not every model gains as much (IMGQ_RUNTIME=auto measures it: worker/runtimes/auto.py).
The conversion (TensorFlow import, Keras build, ov.convert_model: seconds) is done once per model, weights,
output layers and OpenVINO and Keras versions, and saved under ``<state_dir>/openvino`` with the digests of
its files (worker/runtimes/ov_cache.py): a worker that finds a whole conversion there never imports TensorFlow at all.

The model's preprocessing is compiled into the graph (OpenVINO's PrePostProcessor): the converted model takes
uint8 NHWC pixels, as decoded, and does Keras' preprocess_input of the model's family inside (channel order,
mean, scale: ``_compile_preprocessing``), so the decode threads hand it bytes, not a float32 copy four times
larger. tests/test_runtime_parity.py checks the result against TensorFlow on Keras' float input.

It meets worker/runtimes/base.py's ``ModelRuntime`` contract, as the TensorFlow runtime does, so that the
gatherer, the batch pipeline and the activation dumps run unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import threading
from dataclasses import dataclass, field

import numpy as np

from imgq.models.spec import ModelSpec
from worker.images.preprocess import CAFFE_MEAN_BGR, TORCH_MEAN, TORCH_STD, one_line
from worker.runtimes.base import ModelRuntime, as_probabilities, joined
from worker.runtimes.keras_model import WeightsError, build_model, describe_weights, layer_output, model_spec
from worker.runtimes.ov_cache import CacheEntry

log = logging.getLogger(__name__)

PROBABILITIES = "probabilities"  # the converted model's output name for the class probabilities
CONVERSION_FORMAT = 2
# In every cache key: 2 = uint8 NHWC input with the preprocessing inside. Format 1 (float32 input) entries
# are never read again.
PERFORMANCE_HINT = "LATENCY"
# One inference stream using every core, for one synchronous request at a time: what worker/batches/gather.py
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


def cache_key(weights_id: str, layers: tuple[str, ...], ov_version: str, model_id: str = "resnet50",
              preprocessing: str = "caffe") -> str:
    """The conversion cache's folder name for a model: its id (with its file digest for a folder model),
    weights, output layers and preprocessing, with OpenVINO's and Keras' versions (``random:SEED`` weights are
    only the same weights under the same Keras)."""
    parts = [model_id, weights_id, list(layers), preprocessing, ov_version, _package_version("keras"),
             CONVERSION_FORMAT]
    return f"{model_id.split('@')[0]}-" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


@dataclass
class OpenVINOClassifier(ModelRuntime):
    """``spec``'s model with ``weights`` compiled by OpenVINO for ``precision`` (fp32 or bf16) on ``device``.

    ``cache_dir``: where conversions are kept (None: nowhere, convert at every start). ``threads``: 0 lets
    OpenVINO use every core. ``spec``: the model (ResNet50 by default).
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
    spec: ModelSpec | str = "resnet50"
    _keras_model: object = None
    takes_pixels = True  # uint8 pixels: the preprocessing is in the graph

    def model_input(self, pixels: list[np.ndarray]) -> np.ndarray:
        """The batch ``predict`` takes: the decoded uint8 pixels, stacked (the graph preprocesses them)."""
        batch = np.empty((len(pixels), *self.target.shape), dtype=np.uint8)
        for row, image in zip(batch, pixels, strict=True):
            row[...] = image
        return batch

    def __post_init__(self):
        try:
            import openvino as ov
        except ImportError as exc:
            raise OpenVINOError(f"OpenVINO is not installed ({one_line(exc)}): pip install openvino, "
                                f"or {FALLBACK}.") from None
        self.spec = model_spec(self.spec)
        self.weights_id = self.weights_id or describe_weights(self.weights, self.spec)
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
        entry = self.cache_entry(layers)
        if entry is not None and entry.valid():
            try:
                model = self._core.read_model(entry.xml)
                self._complete_spec(entry.about())
                return model
            except Exception as exc:  # a damaged cache entry is converted again, not fatal
                log.warning("Converting again: cannot read the cached OpenVINO model %s (%s)", entry.xml,
                            one_line(exc))
        model = self._convert(layers)
        if entry is not None:
            entry.save(lambda folder: self._write(model, folder), self._about(layers))
        return model

    def cache_entry(self, layers: tuple[str, ...] = ()) -> CacheEntry | None:
        """The cache entry of this model's conversion with ``layers`` (None without a cache folder)."""
        if not self.cache_dir:
            return None
        key = cache_key(self.weights_id, layers, openvino_version(), self.spec.id, self.spec.preprocessing)
        return CacheEntry(self.cache_dir, key, self._identity(layers))

    def _identity(self, layers: tuple[str, ...]) -> dict:
        """What an entry's about.json must say to serve this model with ``layers``: the model's id (its file
        digest), weights, preprocessing (compiled into the graph), outputs, versions and conversion format,
        and its input shape once known (a .h5 folder model's is read from the entry itself: its id, which
        pins the file, pins the input too). An entry written before these were recorded is converted again
        once."""
        identity = {"model": self.spec.id, "weights": self.weights_id, "preprocessing": self.spec.preprocessing,
                    "outputs": [PROBABILITIES, *layers], "openvino": openvino_version(),
                    "keras": _package_version("keras"), "format": CONVERSION_FORMAT}
        if self.spec.input_size != (0, 0):
            identity["input"] = list(self.target.shape)
        return identity

    def _about(self, layers: tuple[str, ...]) -> dict:
        """The about.json of a conversion just made (the spec complete: its input shape known)."""
        return {**self._identity(layers), "input": list(self.target.shape), "feature_layer": self.spec.feature_layer}

    def _complete_spec(self, about: dict) -> None:
        """A .h5 folder model's input size and feature layer, from the entry (no Keras load needed)."""
        import dataclasses

        if self.spec.input_size == (0, 0) and len(about.get("input", ())) == 3:
            height, width, channels = about["input"]
            self.spec = dataclasses.replace(self.spec, input_size=(height, width), channels=channels)
        if self.spec.feature_layer is None and about.get("feature_layer"):
            self.spec = dataclasses.replace(self.spec, feature_layer=about["feature_layer"])

    @staticmethod
    def _write(model, folder: str) -> None:
        import openvino as ov

        ov.save_model(model, os.path.join(folder, "model.xml"), compress_to_fp16=False)

    def _convert(self, layers: tuple[str, ...]):
        """The Keras model (built on first need: TensorFlow is imported only here) as an OpenVINO model."""
        import openvino as ov

        if self._keras_model is None:
            try:
                self._keras_model, weights_id, self.spec = build_model(self.spec, self.weights)
            except ImportError as exc:  # the Dockerfile's openvino image: no TensorFlow, conversions baked in
                raise OpenVINOError(
                    f"No conversion of model {self.spec.id} with weights {self.weights_id} (outputs "
                    f"{', '.join((PROBABILITIES, *layers))}) is cached in {self.cache_dir}, and making one needs "
                    f"TensorFlow, which is missing here ({one_line(exc)}). In the openvino image, use the model "
                    "and weights it was built with (OPENVINO_WEIGHTS) and no --activations, or run the full "
                    "image.") from None
            self._check_same_weights(weights_id)
        shape = self.target.shape
        try:
            model = ov.convert_model(_keras_function(self._keras_model, layers, shape), input=[[-1, *shape]])
            model = _compile_preprocessing(model, self.spec.preprocessing, shape[2])
        except Exception as exc:
            raise OpenVINOError(f"OpenVINO could not convert {self.spec.id} with weights {self.weights_id} "
                                f"({one_line(exc, 300)}); {FALLBACK}.") from None
        self.converted.append(layers)
        log.info("Converted %s (weights %s, outputs %s) to OpenVINO", self.spec.id, self.weights_id,
                 ", ".join((PROBABILITIES, *layers)))
        return model

    def _check_same_weights(self, loaded: str) -> None:
        """Refuse to convert weights other than those this runtime is named by (``weights_id``, read when it
        was built, which keys the cache): a weights file replaced since would otherwise be served, and its
        conversion cached, under the first file's digest. A WeightsError, not an OpenVINOError: the worker stops
        (IMGQ_RUNTIME=auto does not try TensorFlow instead), and its next start reads the new file once."""
        if loaded != self.weights_id:
            self._keras_model = None
            raise WeightsError(f"{self.weights}: changed since this worker read it (now {loaded}, read as "
                               f"{self.weights_id}); start the worker again to serve the new file.")

    def predict_with(self, batch: np.ndarray, layers: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(probabilities (n, 1000), {layer: outputs (n, ...)})`` from one forward pass per slice."""
        return self._run(*self._compiled_for(layers), batch, layers)

    def _run(self, compiled, request, batch: np.ndarray,
             layers: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``predict_with`` on one compiled model and its infer request."""
        ports = [compiled.output(name) for name in (PROBABILITIES, *layers)]
        parts: list[list[np.ndarray]] = [[] for _ in ports]
        with self._lock:
            for start in range(0, len(batch), self.batch_size):
                chunk = np.ascontiguousarray(batch[start:start + self.batch_size], dtype=np.uint8)
                # share_inputs: the slice is read in place; outputs are copied (the next pass reuses them)
                result = request.infer({0: chunk}, share_inputs=True)
                for part, port in zip(parts, ports, strict=True):
                    part.append(result[port])
        if not parts[0]:
            return self.empty_result(layers)
        whole = [joined(part) for part in parts]
        return as_probabilities(whole[0], self.spec), dict(zip(layers, whole[1:], strict=True))

    def preparing(self) -> str:
        """``converting ...`` when no conversion is cached for it (a first start: TensorFlow is imported, the
        Keras model built and converted), else ``compiling ...``."""
        entry = self.cache_entry(())
        if entry is not None and os.path.isdir(entry.folder):
            return f"compiling {self.spec.id} on {self.runtime} (its conversion is cached)"
        kept = f" (once: kept in {self.cache_dir})" if self.cache_dir else ""
        return f"converting {self.spec.id} to {self.runtime}{kept}"

    def prepare(self) -> None:
        """Read the cached conversion (or convert) and compile it: a .h5 folder model's input size is known
        once its conversion is. Raises OpenVINOError."""
        self._compiled_for(())


def _keras_function(model, layers: tuple[str, ...], shape: tuple[int, int, int]):
    """A tf.function over any batch length whose outputs are named: the probabilities and each layer."""
    import keras
    import tensorflow as tf

    outputs = {PROBABILITIES: model.output, **{name: layer_output(model, name) for name in layers}}
    multi = keras.Model(model.input, outputs)
    signature = [tf.TensorSpec((None, *shape), tf.float32)]
    return tf.function(lambda x: multi(x, training=False), input_signature=signature)


def _compile_preprocessing(model, preprocessing: str, channels: int):
    """``model`` (float32 input, Keras' preprocessed pixels) taking uint8 NHWC pixels instead, with Keras'
    ``preprocess_input`` of ``preprocessing`` inside the graph, in Keras' order:

    - caffe: reverse the channels (RGB -> BGR), subtract CAFFE_MEAN_BGR;
    - tf: divide by 127.5, subtract 1;
    - torch: divide by 255, subtract TORCH_MEAN, divide by TORCH_STD;
    - none: convert to float32 only.

    OpenVINO may compute a division as a multiplication by the reciprocal: the input then differs from
    Keras' by a rounding (1 ulp), which the parity tests bound."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    given = ppp.input(0)
    given.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    given.model().set_layout(ov.Layout("NHWC"))
    steps = given.preprocess().convert_element_type(ov.Type.f32)
    if preprocessing == "caffe":
        steps.reverse_channels().mean([float(v) for v in CAFFE_MEAN_BGR])
    elif preprocessing == "tf":
        steps.scale(127.5).mean(1.0)
    elif preprocessing == "torch":
        steps.scale(255.0).mean(list(TORCH_MEAN)).scale(list(TORCH_STD))
    elif preprocessing != "none":
        raise ValueError(f"Expected a preprocessing among caffe, tf, torch, none. Received: {preprocessing!r}")
    return ppp.build()


def load_openvino(weights: str, batch_size: int, precision: str, cache_dir: str | None,
                  threads: int = 0, spec: ModelSpec | str = "resnet50") -> OpenVINOClassifier:
    """An OpenVINOClassifier, not yet warmed up. ``precision`` is the one in effect (see
    worker.runtimes.precision.resolve_precision). Raises WeightsError, OpenVINOError."""
    return OpenVINOClassifier(weights, batch_size, precision, cache_dir, threads=threads, spec=spec)
