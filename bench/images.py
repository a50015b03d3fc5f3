"""The benchmark's images: one sorted list, used by every scenario, and the kind of targets that applies."""

from __future__ import annotations

import statistics

import numpy as np
from PIL import Image

from imgq.storage.selection import PathFilter
from imgq.storage.walk import iter_images

PHONE_MEGAPIXELS = 8.0  # a folder whose median image has more pixels than this is held to the phone targets


def list_images(folder: str, limit: int | None) -> list[str]:
    """The first ``limit`` images under ``folder`` (all without a limit), sorted so that runs compare."""
    paths = sorted(iter_images([folder], PathFilter()))
    if not paths:
        raise ValueError(f"Expected images under {folder}. Received: a folder with none.")
    return paths[:limit] if limit else paths


def median_megapixels(paths: list[str], sample: int = 16) -> float:
    """Median size of the first ``sample`` images, read from their headers only."""
    sizes = []
    for path in paths[:sample]:
        with Image.open(path) as image:
            sizes.append(image.size[0] * image.size[1] / 1e6)
    return statistics.median(sizes)


def photo_kind(paths: list[str]) -> str:
    """``phone`` (12 MP-class photos) or ``imagenet`` (ImageNet-size JPEGs): which targets apply."""
    return "phone" if median_megapixels(paths) >= PHONE_MEGAPIXELS else "imagenet"


def model_batches(paths: list[str], batch_size: int) -> list[np.ndarray]:
    """Every image decoded and preprocessed as the worker does it, cut into float32 batches.

    Raises worker.images.preprocess.ImageError for an image that cannot be decoded: a benchmark folder must be clean.
    """
    from worker.images.preprocess import TARGET_SIZE, load_pixels, to_model_input

    batches = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        batch = np.empty((len(chunk), *TARGET_SIZE, 3), dtype=np.float32)
        for row, path in zip(batch, chunk, strict=True):
            to_model_input(load_pixels(path), out=row)
        batches.append(batch)
    return batches


def caffe_pixels(batch: np.ndarray) -> np.ndarray:
    """The uint8 RGB pixels a caffe-preprocessed float32 batch was made from (what OpenVINO takes)."""
    from worker.images.preprocess import CAFFE_MEAN_BGR

    return np.rint(batch + CAFFE_MEAN_BGR)[..., ::-1].astype(np.uint8)
