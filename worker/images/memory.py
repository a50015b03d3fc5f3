"""What one decode may cost in memory, checked before the decoder runs.

A decode holds the decoded image at full size (the resize comes before any conversion, see
worker/images/preprocess.py): 4 bytes a pixel at most (RGBA, CMYK, 32-bit), so an image of ``max_pixels`` takes up
to ``4 x max_pixels`` bytes (341 MiB at the default). That is the budget of one decode thread.

WebP is the exception: Pillow's WebP plugin reads the whole file into memory, libwebp decodes into a canvas
of its own, Pillow copies the canvas into a bytes object and then into the image: about 16 bytes a pixel
(measured: a 9400x9400 lossless WebP takes 1349 MiB). So a WebP must fit the same budget with its file size
and 16 bytes a pixel, which lets a WebP of up to about 22 million pixels through at the default. HEIF is the
other one (libheif's planes and RGB copy before Pillow's image): 13 bytes a pixel, see worker/images/formats.py.
"""

from __future__ import annotations

from typing import BinaryIO

from PIL import WebPImagePlugin

BYTES_PER_PIXEL = 4  # the widest mode a decode holds at full size
WEBP_BYTES_PER_PIXEL = 16  # libwebp's canvas, Pillow's copy of it, the image (measured, see above)
WEBP_HEADER_BYTES = 30  # what Pillow's WebP plugin reads to learn the canvas size


def decode_budget(max_pixels: int) -> int:
    """Bytes one decode may hold: what an image of ``max_pixels`` takes at the widest mode."""
    return BYTES_PER_PIXEL * max_pixels


def webp_cost(file: BinaryIO, file_bytes: int) -> tuple[int, int, int] | None:
    """``(width, height, bytes to decode)`` when ``file`` is a WebP, else None; the file is left at 0.

    A WebP whose canvas size cannot be read from its header costs "unknown": ``(0, 0, -1)``.
    """
    head = file.read(WEBP_HEADER_BYTES)
    file.seek(0)
    if not WebPImagePlugin._accept(head):
        return None
    size = WebPImagePlugin._get_size(head)
    if size is None:
        return 0, 0, -1
    width, height = size
    return width, height, file_bytes + WEBP_BYTES_PER_PIXEL * width * height
