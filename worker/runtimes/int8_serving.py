"""IMGQ_PRECISION=int8 as a worker serves it: calibrated on a folder of the user's photos, or on the first
images the worker is sent.

With IMGQ_CALIBRATION the worker quantizes (or reads its cached INT8 model) before it takes any batch. Without
it, the worker classifies in fp32 until it has seen IMGQ_CALIBRATION_IMAGES images, quantizes on them in a
background thread, and switches to INT8 once it is ready and agrees with fp32 (worker/runtimes/int8.py). The
choice is remembered beside the fp32 conversion (``int8-first-images.json``), so that a later start serves
INT8 from its first batch. Records say the precision of the pass that made them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from imgq.storage.files import atomic_path, read_regular
from worker.runtimes.base import ModelRuntime
from worker.runtimes.calibration import Calibration, CalibrationError, from_folder
from worker.runtimes.int8 import Int8Classifier
from worker.runtimes.openvino_runtime import OpenVINOClassifier, OpenVINOError

log = logging.getLogger(__name__)

POINTER = "int8-first-images.json"  # in the fp32 entry's folder: the digest of the first images calibrated on
POINTER_MAX_BYTES = 4096


@dataclass(frozen=True)
class Int8Options:
    """The int8 settings of a worker (imgq/settings.py: calibration, calibration_images, int8_min_agreement)
    and the file rules its calibration photos are read under."""

    calibration: str = ""
    photos: int = 300
    min_agreement: float = 0.99
    allowed_roots: tuple[str, ...] = ()
    max_pixels: int = 89_478_485
    max_file_bytes: int = 256 * 1024**2
    jpeg_draft: bool = True

    @classmethod
    def from_settings(cls, settings) -> Int8Options:
        return cls(settings.calibration, settings.calibration_images, settings.int8_min_agreement,
                   settings.allowed_roots, settings.max_pixels, settings.max_file_bytes, settings.jpeg_draft)


def load_int8(spec, weights: str, batch_size: int, cache_dir: str | None, options: Int8Options) -> ModelRuntime:
    """The INT8 runtime of ``spec``, not yet warmed up. Raises WeightsError (OpenVINOError), CalibrationError."""
    def make(calibration: Calibration | None, digest: str = "") -> Int8Classifier:
        return Int8Classifier(weights, batch_size, "fp32", cache_dir, spec=spec, calibration=calibration,
                              calibration_digest=digest, min_agreement=options.min_agreement)

    if options.calibration:
        fp32 = OpenVINOClassifier(weights, batch_size, "fp32", cache_dir, spec=spec)
        fp32._compiled_for(())  # the spec complete (a .h5 folder model's input size) before decoding for it
        calibration = from_folder(options.calibration, fp32.target, options.photos,
                                  allowed_roots=options.allowed_roots, max_pixels=options.max_pixels,
                                  max_file_bytes=options.max_file_bytes, jpeg_draft=options.jpeg_draft)
        return make(calibration)
    return CalibratingOnFirstImages(OpenVINOClassifier(weights, batch_size, "fp32", cache_dir, spec=spec), make,
                                    options.photos)


class CalibratingOnFirstImages(ModelRuntime):
    """fp32 until ``count`` images were classified, then INT8 calibrated on them (see the module's docstring).

    ``precision`` is the one served now; ``last_precision`` the one of the last pass; ``int8_note`` what the
    worker says about INT8 (ready line, log)."""

    takes_pixels = True

    def __init__(self, fp32: OpenVINOClassifier, make: Callable[..., Int8Classifier], count: int):
        self.fp32, self._make, self.count = fp32, make, count
        self._active: ModelRuntime = fp32
        self._ready: Int8Classifier | None = None
        self._seen: list[np.ndarray] = []
        self._thread: threading.Thread | None = None
        self.load_seconds = 0.0
        self.last_precision = "fp32"
        self.int8_note = f"int8 after calibrating on the first {count} images (fp32 until then)"
        self._tried_remembered = False

    spec = property(lambda self: self.fp32.spec)
    weights_id = property(lambda self: self.fp32.weights_id)
    batch_size = property(lambda self: self.fp32.batch_size)
    runtime = property(lambda self: self.fp32.runtime)
    precision = property(lambda self: self._active.precision)

    @property
    def job_precision(self) -> str:
        """int8 until INT8 was refused or could not be prepared, fp32 for good after. A job that asked for int8
        is what this worker calibrates on: its first images are classified in fp32, their records say so, and
        so does `imgq status` (docs/runtime.md, "INT8"). A job that asked for fp32 is never taken: its passes
        would turn int8 half-way."""
        thread = self._thread
        refused = self._ready is None and self._active is self.fp32 and thread is not None and not thread.is_alive()
        return "fp32" if refused else "int8"

    @property
    def precision_may_change(self) -> bool:
        """True until INT8 is ready, refused or failed: ``job_precision`` may still turn fp32."""
        thread = self._thread
        return self._ready is None and self._active is self.fp32 and (thread is None or thread.is_alive())

    def model_input(self, pixels: list[np.ndarray]) -> np.ndarray:
        return self.fp32.model_input(pixels)

    def prepare(self) -> None:
        """fp32 ready; INT8 too when an earlier start calibrated on its first images and it still agrees."""
        self.fp32.prepare()
        if self._active is not self.fp32 or self._tried_remembered:
            return
        self._tried_remembered = True
        digest = self._remembered()
        if not digest:
            return
        try:
            int8 = self._make(None, digest)
            int8.warm_up()
        except OpenVINOError as exc:
            log.info("INT8 calibrated at an earlier start cannot be used (%s): calibrating again", exc)
            return
        if not int8.refusal:
            self._active = int8
            self.count = 0
            self.int8_note = f"int8 calibrated on an earlier start's first images: {int8.agreement}"

    def warm_up(self) -> None:
        """``prepare``, then the usual small pass on the runtime serving now, which is never collected as a
        calibration image."""
        self.prepare()
        blank = np.zeros((self.warm_up_images, *self.target.shape), dtype=np.uint8)
        self._active.predict(self.model_input(list(blank)))

    def predict_with(self, batch: np.ndarray, layers: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self._ready is not None and self._active is self.fp32:
            self._active = self._ready  # only here, in the one thread that runs passes: a pass is one precision
            log.info("%s switched to int8: %s", self.spec.id, self._ready.agreement)
        result = self._active.predict_with(batch, layers)
        self.last_precision = getattr(self._active, "last_precision", self._active.precision)
        if self._active is self.fp32 and self._thread is None:
            self._collect(batch)
        return result

    def _collect(self, batch: np.ndarray) -> None:
        room = self.count - len(self._seen)
        self._seen.extend(np.array(row, dtype=np.uint8) for row in batch[:room])  # copies: the batch is reused
        if len(self._seen) >= self.count:
            self._thread = threading.Thread(target=self._calibrate, name="imgq-int8", daemon=True)
            self._thread.start()

    def _calibrate(self) -> None:
        """In the background: quantize on the images seen, measure, and offer INT8 to the next pass."""
        try:
            calibration = Calibration.of(self._seen, f"the first {len(self._seen)} images this worker was sent")
            int8 = self._make(calibration)
            int8.warm_up()
        except (OpenVINOError, CalibrationError) as exc:
            self.int8_note = f"fp32: int8 could not be prepared ({exc})"
            log.warning("%s stays on fp32: %s", self.spec.id, exc)
            return
        finally:
            self._seen = []  # hundreds of decoded images: not kept once used
        if int8.refusal:
            self.int8_note = f"fp32: {int8.refusal}"
            return
        self._remember(calibration.digest)
        self.int8_note = f"int8 since calibrating on the first images: {int8.agreement}"
        self._ready = int8

    def _pointer(self) -> str | None:
        entry = self.fp32.cache_entry(())
        return os.path.join(entry.folder, POINTER) if entry is not None else None

    def _remembered(self) -> str:
        path = self._pointer()
        try:
            found = read_regular(path, POINTER_MAX_BYTES) if path else None
            record = json.loads(found[0]) if found else {}
        except (OSError, ValueError):  # RefusedFile is a ValueError: calibrate again
            return ""
        digest = record.get("calibration", "") if isinstance(record, dict) else ""
        return digest if isinstance(digest, str) else ""

    def _remember(self, digest: str) -> None:
        path = self._pointer()
        if not path:
            return
        try:
            with atomic_path(path) as tmp, open(tmp, "w") as file:
                json.dump({"calibration": digest}, file)
        except OSError as exc:
            log.warning("INT8's calibration not remembered in %s: %s", path, exc)
