"""Decode cost per image, one thread: a full decode, libjpeg's draft (DCT-scaled) decode, and the worker's
own load_pixels as it stands. Tells how much of a 12 MP photo's time is the decode and what draft saves."""

from __future__ import annotations

import inspect
import time
from functools import partial

from PIL import Image

SIZE = (224, 224)


def pillow_decode(path: str, draft: bool) -> None:
    """Open, optionally draft, convert to RGB if needed and resize to 224x224 (nearest), as Keras' load_img."""
    with Image.open(path) as image:
        if draft:
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below the requested size.
            image.draft("RGB", SIZE)
        if image.mode != "RGB":  # load_img converts only then: a needless convert copies all 12 MP
            image = image.convert("RGB")
        image.resize(SIZE, Image.Resampling.NEAREST)


def ms_per_image(paths: list[str], decode) -> float:
    decode(paths[0])  # the first open pays for the file cache and Pillow's plugin imports
    started = time.perf_counter()
    for path in paths:
        decode(path)
    return (time.perf_counter() - started) * 1000 / len(paths)


def measure(paths: list[str], sample: int = 16) -> dict:
    """Milliseconds per image over the first ``sample`` images, single-threaded: Pillow alone with and
    without draft, and the worker's load_pixels (with its jpeg_draft switch on too, when it has one)."""
    from worker.images.preprocess import load_pixels

    chosen = paths[:sample]
    figures = {
        "images": len(chosen),
        "full_ms": ms_per_image(chosen, lambda p: pillow_decode(p, draft=False)),
        "draft_ms": ms_per_image(chosen, lambda p: pillow_decode(p, draft=True)),
        "worker_load_pixels_ms": ms_per_image(chosen, load_pixels),
    }
    if "jpeg_draft" in inspect.signature(load_pixels).parameters:
        figures["worker_load_pixels_draft_ms"] = ms_per_image(chosen, partial(load_pixels, jpeg_draft=True))
    return figures
