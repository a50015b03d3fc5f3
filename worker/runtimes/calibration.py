"""The photos INT8 is calibrated on, and those held out to measure how much the labels moved.

Calibration is on the user's own photos: a folder (IMGQ_CALIBRATION), read under the worker's usual file rules
(allowed roots, size caps, no blocking open, bounded decode), or the first images the worker is sent. Every
``HOLD_OUT_EVERY``-th photo is held out: NNCF never sees it, and the INT8 model's labels on it are compared
with fp32's (worker/runtimes/int8.py). The split is by position, so the same photos give the same split.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from imgq.storage.errors import ImageError
from imgq.storage.selection import PathFilter
from imgq.storage.walk import iter_images
from worker.images.preprocess import Target, load_pixels

log = logging.getLogger(__name__)

HOLD_OUT_EVERY = 4  # a quarter held out: 75 of 300 photos measure the agreement, 225 calibrate
MIN_PHOTOS = 8  # fewer cannot calibrate and hold out anything meaningful


class CalibrationError(ValueError):
    """The calibration photos cannot be used (too few, the folder unreadable); the message says what to do."""


@dataclass(frozen=True)
class Calibration:
    """Decoded uint8 pixels of the model's input shape: ``calibrate`` for NNCF, ``held_out`` for the agreement.
    ``digest`` stands for the pixels (what a cached INT8 model was calibrated on), ``source`` for the log."""

    calibrate: tuple[np.ndarray, ...]
    held_out: tuple[np.ndarray, ...]
    digest: str
    source: str

    @classmethod
    def of(cls, pixels: list[np.ndarray], source: str) -> Calibration:
        """Split ``pixels`` (in a stable order) into calibration and held-out photos. Raises CalibrationError
        for fewer than MIN_PHOTOS."""
        if len(pixels) < MIN_PHOTOS:
            raise CalibrationError(f"INT8 needs at least {MIN_PHOTOS} calibration photos; {source} gave "
                                   f"{len(pixels)}.")
        digest = hashlib.sha256()
        for image in pixels:
            digest.update(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
        held = [i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1 for i in range(len(pixels))]
        return cls(tuple(p for p, h in zip(pixels, held, strict=True) if not h),
                   tuple(p for p, h in zip(pixels, held, strict=True) if h), digest.hexdigest()[:20], source)


def from_folder(folder: str, target: Target, count: int, *, allowed_roots: tuple[str, ...] = (),
                max_pixels: int = 89_478_485, max_file_bytes: int = 256 * 1024**2,
                jpeg_draft: bool = True) -> Calibration:
    """The first ``count`` images of ``folder`` (walk order: sorted by path) that decode, as the worker decodes
    them for the model (``target``, draft decoding as configured). An image that cannot be decoded is skipped
    (counted in the log line), as a job would record it. Raises CalibrationError."""
    pixels: list[np.ndarray] = []
    refused = 0
    for path in iter_images([folder], PathFilter()):
        if len(pixels) >= count:
            break
        try:
            pixels.append(load_pixels(path, allowed_roots=allowed_roots, max_pixels=max_pixels,
                                      max_file_bytes=max_file_bytes, jpeg_draft=jpeg_draft, target=target))
        except ImageError:
            refused += 1
    if refused:
        log.warning("INT8 calibration: %d images of %s could not be decoded and were left out", refused, folder)
    return Calibration.of(pixels, f"IMGQ_CALIBRATION={folder}")
