"""INT8: the model's OpenVINO IR quantized by NNCF on the user's own photos, used only where its labels agree.

The fp32 conversion (worker/runtimes/openvino_runtime.py, preprocessing in the graph, uint8 in) is quantized
with ``nncf.quantize`` (post-training quantization: statistics of the calibration photos set each
quantizer's range, then bias correction) and cached beside it, keyed by everything the fp32 entry is keyed by
plus the calibration photos' digest and NNCF's version and settings; the entry's files are checked against
their digests as fp32 entries are (worker/runtimes/ov_cache.py).

Agreement is measured, not assumed: the held-out photos (worker/runtimes/calibration.py) run through fp32 and
INT8; the share whose top-1 label is the same and the mean overlap of the top-5 are recorded in the entry's
about.json and printed. Below IMGQ_INT8_MIN_AGREEMENT the worker serves fp32 and says why, once.

NNCF's settings, per family, from NNCF's own guidance:

- preset: PERFORMANCE (symmetric quantization of weights and activations, the fastest) for ReLU networks
  (ResNet50, ResNet50V2), whose activations are non-negative; MIXED (asymmetric activations) for the others:
  swish (EfficientNetV2), hard-swish (MobileNetV3) and GELU (ConvNeXt) produce negative values that a
  symmetric range wastes half its levels on. A user's folder model gets MIXED: its activations are unknown,
  and MIXED is right for both kinds.
- fast_bias_correction: off for MobileNetV3, on otherwise. NNCF's reference data show MobileNetV3's top-1
  collapsing with the fast bias correction (57.9 -> 41.9) and recovering with the full one.
- model_type TRANSFORMER for ConvNeXt: NNCF's scheme for networks with LayerNorm and GELU (it keeps those,
  and the additions around them, in floating point, and quantizes the matrix multiplications and
  convolutions). With MIXED alone ConvNeXt-Tiny's top-1 agreed with fp32 on 95.1% of 1000 photos, under the
  0.99 bar; with the transformer scheme on 100.0% (top-5 overlap 75.5% -> 97.7%; image-dependent test
  weights, Intel Xeon with AVX-512 VNNI, BENCHMARKS.md "INT8").
- overflow fix: NNCF's default (the first layer's weights use 7 bits) is kept: on CPUs without VNNI the
  int8 multiply-accumulate (AVX2's vpmaddubsw) saturates its int16 sums otherwise.

The INT8 model returns the probabilities and the model's pooled features (its feature layer, which heads and
embeddings read). Activation dumps of other layers run on the fp32 model: their batches' records say fp32
(``last_precision``), so that no record claims a precision its labels were not made in.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from worker.runtimes.calibration import Calibration
from worker.runtimes.openvino_runtime import OpenVINOClassifier, OpenVINOError, cache_key, openvino_version
from worker.runtimes.ov_cache import CacheEntry

log = logging.getLogger(__name__)

NON_RELU = ("efficientnetv2b0", "efficientnetv2s", "convnexttiny", "mobilenetv3large")
SLOW_BIAS_CORRECTION = ("mobilenetv3large",)
TRANSFORMER_SCHEME = ("convnexttiny",)


def nncf_version() -> str:
    try:
        return importlib.metadata.version("nncf")
    except importlib.metadata.PackageNotFoundError:
        return ""


def quantization_settings(spec) -> dict:
    """NNCF's settings for ``spec``'s family, as plain values (they key the cache; see the module's docstring)."""
    mixed = spec.folder is not None or spec.name in NON_RELU
    settings = {"preset": "mixed" if mixed else "performance",
                "fast_bias_correction": spec.name not in SLOW_BIAS_CORRECTION, "target_device": "CPU"}
    # Only where it applies: an added key would change the cache key of every other model's entry.
    return {**settings, "model_type": "transformer"} if spec.name in TRANSFORMER_SCHEME else settings


def quantize(model, photos: tuple[np.ndarray, ...], settings: dict):
    """``model`` (OpenVINO, uint8 NHWC in) quantized on ``photos`` with ``settings``. Raises OpenVINOError."""
    try:
        import nncf
    except ImportError as exc:
        raise OpenVINOError(f"IMGQ_PRECISION=int8 needs NNCF ({exc}): pip install nncf, or run fp32.") from None
    dataset = nncf.Dataset(list(photos), lambda image: np.ascontiguousarray(image[None], dtype=np.uint8))
    preset = nncf.QuantizationPreset.MIXED if settings["preset"] == "mixed" else nncf.QuantizationPreset.PERFORMANCE
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars are not a worker's log
            return nncf.quantize(model, dataset, preset=preset, target_device=nncf.TargetDevice.CPU,
                                 subset_size=len(photos), fast_bias_correction=settings["fast_bias_correction"],
                                 model_type=nncf.ModelType.TRANSFORMER if settings.get("model_type") else None)
    except Exception as exc:  # NNCF raises many kinds; one line, and the worker serves fp32
        raise OpenVINOError(f"NNCF could not quantize the model ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class Agreement:
    """How far INT8's labels moved from fp32's on ``photos`` held-out photos."""

    top1: float  # share whose top-1 label is the same
    top5_overlap: float  # mean share of the top-5 labels in common
    photos: int

    @classmethod
    def measured(cls, fp32: np.ndarray, int8: np.ndarray) -> Agreement:
        top5 = [set(row) for row in np.argsort(-fp32, axis=1)[:, :5]]
        other = [set(row) for row in np.argsort(-int8, axis=1)[:, :5]]
        overlap = np.mean([len(a & b) / 5 for a, b in zip(top5, other, strict=True)]) if top5 else 0.0
        return cls(float(np.mean(fp32.argmax(axis=1) == int8.argmax(axis=1))), float(overlap), len(fp32))

    def __str__(self) -> str:
        return (f"top-1 agrees with fp32 on {self.top1:.1%} of {self.photos} held-out photos, top-5 overlap "
                f"{self.top5_overlap:.1%}")


@dataclass
class Int8Classifier(OpenVINOClassifier):
    """The OpenVINO runtime with the classification pass quantized (see the module's docstring).

    ``calibration``: the photos to quantize on, or None to read a cached entry of ``calibration_digest``
    (calibrated on an earlier start's first images). ``min_agreement``: the bar. After ``warm_up``:
    ``agreement`` holds the figures, ``refusal`` why it serves fp32 (empty when INT8 serves), ``precision`` is
    ``int8`` or ``fp32`` accordingly, and ``quantize_seconds`` is 0 when the entry came from the cache.
    """

    calibration: Calibration | None = None
    calibration_digest: str = ""
    min_agreement: float = 0.99
    agreement: Agreement | None = None
    refusal: str = ""
    quantize_seconds: float = 0.0
    last_precision: str = "int8"
    _int8: tuple | None = field(default=None, repr=False)
    _int8_layers: tuple[str, ...] = ()

    def __post_init__(self):
        super().__post_init__()
        self.precision = "int8"
        if self.calibration is not None:
            self.calibration_digest = self.calibration.digest

    def int8_entry(self) -> CacheEntry | None:
        """The cache entry of this model quantized on these photos (None without a cache folder)."""
        if not self.cache_dir:
            return None
        base = cache_key(self.weights_id, (), openvino_version(), self.spec.id, self.spec.preprocessing)
        parts = [base, "int8", list(self._int8_layers), self.calibration_digest, nncf_version(),
                 quantization_settings(self.spec)]
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
        identity = {**self._identity(self._int8_layers), "precision": "int8", "calibration": self.calibration_digest}
        return CacheEntry(self.cache_dir, f"{self.spec.id.split('@')[0]}-int8-{digest}", identity)

    def prepare(self) -> None:
        """Convert (or read) fp32, quantize (or read) INT8, measure or read the agreement, and decide: a model
        that cannot be quantized, or whose labels moved too far, serves fp32, with the reason. Costs nothing
        when called again."""
        super().prepare()
        if self._int8 is not None or self.refusal:
            return
        try:
            self._prepare_int8()
        except OpenVINOError as exc:
            self._refuse(str(exc))
        if self.agreement is not None and not self.refusal and self.agreement.top1 < self.min_agreement:
            self._refuse(f"INT8's {self.agreement}, under IMGQ_INT8_MIN_AGREEMENT={self.min_agreement}")

    def preparing(self) -> str | None:
        if self.calibration is None:
            return None
        return (f"quantizing {self.spec.id} to int8 on {len(self.calibration.calibrate)} photos "
                f"({self.calibration.source}), unless cached")

    @property
    def int8_note(self) -> str:
        """What the worker's ready line says of INT8."""
        if self.refusal:
            return f"fp32: int8 refused: {self.refusal}"
        how = f"quantized in {self.quantize_seconds:.1f} s" if self.quantize_seconds else "cached"
        source = self.calibration.source if self.calibration else "an earlier start's photos"
        return f"int8 calibrated on {source} ({how}): {self.agreement}"

    def _refuse(self, reason: str) -> None:
        self.refusal, self.precision, self.last_precision = reason, "fp32", "fp32"
        log.warning("%s serves fp32, not int8: %s", self.spec.id, reason)

    def _prepare_int8(self) -> None:
        self._int8_layers = (self.spec.feature_layer,) if self.spec.feature_layer else ()
        entry = self.int8_entry()
        if entry is not None and entry.valid() and entry.about().get("agreement"):
            model = self._core.read_model(entry.xml)
            self.agreement = Agreement(**entry.about()["agreement"])
        elif self.calibration is None:
            raise OpenVINOError("no cached INT8 model of these calibration photos, and no photos to quantize on")
        else:
            model = self._quantized(entry)
        self._int8 = self._compile(model)
        if self.agreement is None:
            self.agreement = self._measure()
            if entry is not None:
                entry.save(lambda folder: self._write(model, folder), self._int8_about())
        log.info("%s int8 (%s): %s", self.spec.id, "quantized now" if self.quantize_seconds else "cached",
                 self.agreement)

    def _quantized(self, entry):
        started = time.perf_counter()
        settings = quantization_settings(self.spec)
        log.info("Quantizing %s to int8 on %d photos (%s; NNCF %s, %s)", self.spec.id,
                 len(self.calibration.calibrate), self.calibration.source, nncf_version(), settings)
        model = quantize(self._read_or_convert(self._int8_layers), self.calibration.calibrate, settings)
        self.quantize_seconds = time.perf_counter() - started
        return model

    def _compile(self, model) -> tuple:
        try:
            compiled = self._core.compile_model(model, self.device, self.config)
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line report
            raise OpenVINOError(f"OpenVINO could not compile the int8 model ({exc})") from None
        return compiled, compiled.create_infer_request()

    def _measure(self) -> Agreement:
        held_out = np.stack(self.calibration.held_out)
        fp32 = super().predict_with(held_out, ())[0]
        int8 = self._run(*self._int8, held_out, ())[0]
        return Agreement.measured(fp32, int8)

    def _int8_about(self) -> dict:
        return {**self._about(self._int8_layers), "precision": "int8", "calibration": self.calibration_digest,
                "calibration_source": self.calibration.source if self.calibration else "",
                "calibration_photos": len(self.calibration.calibrate) if self.calibration else 0,
                "nncf": nncf_version(), "quantization": quantization_settings(self.spec),
                "quantize_seconds": round(self.quantize_seconds, 1), "agreement": vars(self.agreement)}

    def predict_with(self, batch: np.ndarray, layers: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The classification pass on INT8; a pass with layers to dump (or a refused INT8) on fp32.
        ``last_precision`` says which, for the records of this pass."""
        if self.refusal or self._int8 is None or not set(layers) <= set(self._int8_layers):
            self.last_precision = "fp32"
            return super().predict_with(batch, layers)
        self.last_precision = "int8"
        return self._run(*self._int8, batch, layers)
