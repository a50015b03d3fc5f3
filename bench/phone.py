"""Phone-like photos from any folder of pictures: 4032x3024 JPEGs at quality 92, every third one on its side.

Real phone photos taken upright are usually stored landscape with an EXIF orientation (6 or 8) telling the
viewer to rotate them; imgq must apply it, Keras' load_img does not. Output is deterministic: the same
sources give byte-identical files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from imgq.storage.selection import PathFilter
from imgq.storage.walk import iter_images

PHONE_SIZE = (4032, 3024)  # width, height of a 12 MP phone sensor (4:3)
QUALITY = 92  # what phone cameras typically write
GRAIN = 5.0
# Standard deviation of added noise: an upscaled 500 px picture is so smooth that JPEG would compress it to a
# fraction of a real photo's 3-5 MB; this sensor-like grain brings it to ~2.8 MB, and the entropy-decoding
# work near a real photo's.

_EXIF_ORIENTATION = 0x0112
_EXIF_MAKE, _EXIF_MODEL = 0x010F, 0x0110
# How to store an upright picture so that a viewer applying the orientation shows it upright again:
# 6 tells it to rotate 90 degrees clockwise, so the stored pixels are rotated 90 degrees counter-clockwise.
_STORED_FOR_ORIENTATION = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def make_phone_photos(src: str, dst: str, count: int) -> list[Path]:
    """Write ``count`` photos ``phone_0000.jpg``... into ``dst``, cycling through the images under ``src``.

    Raises ValueError when ``src`` holds no image.
    """
    sources = sorted(iter_images([src], PathFilter()))
    if not sources:
        raise ValueError(f"Expected images under {src}. Received: a folder with none.")
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    return [write_phone_photo(sources[i % len(sources)], out / f"phone_{i:04d}.jpg", i) for i in range(count)]


def orientation_for(index: int) -> int:
    """1 (upright) for two photos in three; the third alternates between 6 and 8."""
    if index % 3 != 2:
        return 1
    return 6 if (index // 3) % 2 == 0 else 8


def write_phone_photo(source: str, target: Path, index: int) -> Path:
    orientation = orientation_for(index)
    with Image.open(source) as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
    # A photo taken upright is portrait once displayed: 3024x4032 shown, 4032x3024 stored.
    shown_size = PHONE_SIZE if orientation == 1 else PHONE_SIZE[::-1]
    upright = _with_grain(ImageOps.fit(upright, shown_size, Image.Resampling.BICUBIC), seed=index)
    stored = upright.transpose(_STORED_FOR_ORIENTATION[orientation]) if orientation != 1 else upright
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = orientation
    exif[_EXIF_MAKE], exif[_EXIF_MODEL] = "imgq", "bench phone"
    partial = target.with_name(target.name + ".partial")  # written whole, then renamed: never half a file
    stored.save(partial, "JPEG", quality=QUALITY, exif=exif.tobytes())
    os.replace(partial, target)
    return target


def _with_grain(image: Image.Image, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * GRAIN
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
