"""The formats Pillow does not open by itself, recognised by content: HEIF/HEIC and camera RAW.

- HEIF (every iPhone's photos since 2017) opens through pillow-heif, a binding of libheif, as a Pillow plugin.
  libheif reads the whole file (at most IMGQ_MAX_FILE_BYTES) and parses its boxes, which give the size; no
  pixel is decoded before ``_check_size`` and the memory check below. libheif applies the container's own
  transforms (``irot``, ``imir``) when it decodes; an EXIF orientation in a HEIF is informational (the HEIF
  specification says so, and iPhones write both), so it is never applied on top: a photo is turned once.
  With draft decoding, its embedded thumbnail stands for it only when the two show the same picture
  (``heif_draft``).
- RAW (DNG, CR2, NEF, ARW, ...) opens through LibRaw (rawpy), which reads the metadata only; the embedded
  preview is classified, as photo tools show it, never the sensor data (demosaicing a 24 MP raw takes seconds).
  A JPEG preview goes through the normal JPEG path (read budget, size from its header, draft decoding, pixel
  cap); an uncompressed one is refused above IMGQ_MAX_PIXELS. Its bytes are at most the file's, itself at
  most IMGQ_MAX_FILE_BYTES. The camera's orientation (LibRaw's ``flip``) applies unless the preview carries
  its own EXIF orientation.

A TIFF-structured file is RAW when it says so (a DNG's DNGVersion tag, a CR2's marker) or when it is named
as a RAW (NEF, ARW, PEF, ... are TIFF with nothing standard to tell them apart): the name only chooses between
two decoders of a content that is allowed anyway.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from typing import BinaryIO

from imgq.contract import PILLOW_FORMATS
from imgq.storage import heif_thumbnails
from imgq.storage.errors import ImageError, one_line
from imgq.storage.image_kinds import HEIF, ORIENTATION_FOR_FLIP, open_in_libraw
from worker.images.memory import decode_budget

HEIF_BYTES_PER_PIXEL = 13
# What a HEIF decode holds at full size beyond the file: libheif's YCbCr planes, its interleaved RGB(A) copy and
# Pillow's image. Measured (peak RSS of load_pixels): 7.9 bytes a pixel for a 24 MP RGB 4:2:0 HEIC (what phones
# write), 13.0 for a 12 MP RGBA 4:4:4 one; the worst is the bound. Checked against the budget of every decode
# (worker/images/memory.py): at the default IMGQ_MAX_PIXELS a HEIF of up to ~27 MP decodes whole (a 12 or 24 MP iPhone
# photo; a 48 MP "HEIF Max" one needs IMGQ_MAX_PIXELS of 160 million, or draft decoding of its thumbnail:
# heif_draft). tests/test_formats.py pins the bound.
THUMBNAIL_HELD_BYTES = 9
# A decoded thumbnail held while a tile of the picture is decoded to check it (heif_draft): pillow-heif's RGB(A)
# buffer (3 or 4 bytes a pixel), Pillow's image (4) and its grey copy (1).



def register_heif() -> None:
    """Make Pillow open HEIF (once per process; pillow-heif is imported only by the worker).

    Thumbnails are listed (their boxes are metadata), never decoded unless ``draft`` picks one: with
    IMGQ_JPEG_DRAFT, a HEIF whose embedded thumbnail is at least the model's input a side (an iPhone's 320x240
    for a 224 model) and shows its picture is classified from it, as a JPEG is decoded at a reduced scale
    (``heif_draft``, worker/images/preprocess.py). pillow-heif's draft takes only a thumbnail that is a scaled copy
    of the image by its boxes: same mode, aspect ratio, crop, rotation and mirroring, colour profile."""
    import pillow_heif

    pillow_heif.register_heif_opener(thumbnails=True)


class ThumbnailNotThePicture(Exception):
    """The embedded thumbnail draft chose shows another picture than the HEIF's primary image, which every viewer
    shows: the primary image is what is classified (the caller opens the file again, without draft)."""


def heif_draft(image, file: BinaryIO, side: int, max_pixels: int) -> bool:
    """Let pillow-heif decode an embedded thumbnail of ``image`` (a HEIF just opened from ``file``, a checked
    regular file) of at least ``side`` pixels a side instead of the picture; True when it took one (``image.size``
    is then the thumbnail's), False when the picture is to be decoded whole.

    A thumbnail is taken only when it agrees with a tile of the primary image, decoded alone
    (imgq/storage/heif_thumbnails.py): a primary image coded whole (not a grid of tiles) cannot be checked for
    less than its full decode, and its thumbnail is never taken. Raises ThumbnailNotThePicture when the thumbnail
    chosen does not agree with the picture (``image`` then holds that thumbnail).

    Memory, while pillow-heif holds the file: first the thumbnail draft picks is decoded (every thumbnail listed,
    at most box x box pixels, must fit the budget); then, that thumbnail held (THUMBNAIL_HELD_BYTES a pixel), one
    tile (its size from the boxes) is decoded by a second libheif context (which reads at most the file again).
    A 48 MP "HEIF Max" photo, over the budget whole at the default IMGQ_MAX_PIXELS, is then classified from its
    thumbnail."""
    boxes = [box for box in image.info.get("thumbnails") or [] if isinstance(box, int)]
    if not boxes or max(boxes) < side:
        return False
    try:
        file_bytes = os.fstat(file.fileno()).st_size
    except (AttributeError, OSError):  # held in memory (an s3:// object): no tile decode to check it against
        return False
    budget = decode_budget(max_pixels)
    if file_bytes + HEIF_BYTES_PER_PIXEL * max(boxes) ** 2 > budget:
        return False
    spare = budget - 2 * file_bytes - THUMBNAIL_HELD_BYTES * max(boxes) ** 2
    picture = heif_thumbnails.tiled_picture(file, spare // HEIF_BYTES_PER_PIXEL)
    if picture is None:
        return False
    with picture:
        if image.draft(image.mode, (side, side)) is None:
            return False
        try:
            shown = heif_thumbnails.shows_picture(image, picture)
        except (ValueError, SyntaxError, EOFError):  # a thumbnail Pillow cannot take: the full decode judges the file
            shown = False
    if not shown:
        raise ThumbnailNotThePicture(f"its {image.width}x{image.height} thumbnail does not agree with its picture")
    return True


def check_heif_cost(width: int, height: int, file_bytes: int, max_pixels: int) -> None:
    """Refuse a HEIF that would take more memory to decode than an image of ``max_pixels`` (worker/images/memory.py).

    Raises ImageError("too_large").
    """
    needed = file_bytes + HEIF_BYTES_PER_PIXEL * width * height
    budget = decode_budget(max_pixels)
    if needed > budget:
        raise ImageError("too_large", f"a {width}x{height} HEIF takes {needed >> 20} MiB to decode, more than "
                                      f"{budget >> 20} MiB (4 bytes a pixel of IMGQ_MAX_PIXELS)")


LIBHEIF_LIMIT = "Security limit exceeded"
# libheif's own bounds (image size, tiles, items, memory blocks, ...), checked as it parses and decodes a file
# whatever imgq allows: pillow-heif raises RuntimeError("Memory allocation error: Security limit exceeded: ...").
_LIBHEIF_IMAGE_SIZE = re.compile(r"Image size (\d+)x(\d+) exceeds the maximum image size (\d+)")


def over_libheif_limit(exc: BaseException) -> ImageError | None:
    """libheif's refusal of a HEIF over one of its own limits, as a too_large ImageError in imgq's words (the
    image's size and the limit, as imgq's other too_large messages say them); None for any other failure.

    imgq's checks come first and are stricter at the default IMGQ_MAX_PIXELS: libheif's image size limit
    (32768 x 32768 pixels) is met only with IMGQ_MAX_PIXELS raised past it, its other limits by odd files."""
    text = str(exc)
    if LIBHEIF_LIMIT not in text:
        return None
    size = _LIBHEIF_IMAGE_SIZE.search(text)
    if size:
        width, height, limit = size.groups()
        return ImageError("too_large", f"a {width}x{height} HEIF is more than {limit} pixels, libheif's own limit "
                                       "(whatever IMGQ_MAX_PIXELS allows)")
    detail = one_line(ValueError(text.partition(LIBHEIF_LIMIT)[2].lstrip(": ")), 160)
    return ImageError("too_large", f"a HEIF over one of libheif's own limits ({detail}), whatever imgq's allow")


@dataclass(frozen=True)
class RawPreview:
    """The preview of a RAW, still encoded: ``file`` (JPEG, or PPM made here from an uncompressed preview), to
    open with ``formats``; ``orientation``: the camera's, when the preview does not say its own (EXIF)."""

    file: BinaryIO
    formats: tuple[str, ...]
    orientation: int


def raw_preview(file: BinaryIO, max_pixels: int) -> RawPreview:
    """The embedded preview of the camera RAW open as ``file`` (a checked regular file).

    Raises ImageError: no_preview (a RAW without one, or one LibRaw cannot extract), corrupt (LibRaw cannot
    read the file), too_large (an uncompressed preview over ``max_pixels``).
    """
    import rawpy

    raw = rawpy.RawPy()
    try:
        open_in_libraw(raw, file)
        thumb = raw.extract_thumb()
        orientation = ORIENTATION_FOR_FLIP.get(raw.sizes.flip, 1)
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        raise ImageError("no_preview", "a camera RAW without an embedded preview") from None
    except rawpy.LibRawFileUnsupportedError:
        raise ImageError("not_an_image", "taken for a camera RAW (by its name or marks), but not one LibRaw reads") \
            from None
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        raise ImageError("corrupt", f"LibRaw cannot read it: {_libraw_reason(exc)}") from None
    finally:
        raw.close()
    if thumb.format == rawpy.ThumbFormat.JPEG:
        return RawPreview(io.BytesIO(thumb.data), ("JPEG",), orientation)
    return RawPreview(_as_ppm(thumb.data, max_pixels), ("PPM",), orientation)


def _libraw_reason(exc: BaseException) -> str:
    """LibRaw's message (rawpy passes it as bytes) on one line."""
    reason = exc.args[0] if exc.args else exc
    return one_line(ValueError(reason.decode(errors="replace")) if isinstance(reason, bytes) else exc)


def _as_ppm(pixels, max_pixels: int) -> BinaryIO:
    """An uncompressed (bitmap) preview, already decoded by LibRaw (so no bigger than the file), as a PPM."""
    height, width = pixels.shape[:2]
    if width * height > max_pixels:
        raise ImageError("too_large", f"{width}x{height} is more than {max_pixels} pixels")
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype.itemsize != 1:
        raise ImageError("no_preview", f"a camera RAW whose preview is not 8-bit RGB ({pixels.shape})")
    return io.BytesIO(b"P6 %d %d 255\n" % (width, height) + pixels.tobytes())


def pillow_formats(kind: str) -> tuple[str, ...]:
    """The Pillow plugins that may open a file sniffed as ``kind`` (HEIF, or "" for the others)."""
    return (HEIF,) if kind == HEIF else PILLOW_FORMATS
