"""From an image path to ResNet50's input, following Keras' recipe, with every failure named.

Keras' recipe is ``load_img(path, target_size=(224, 224))`` -> ``img_to_array`` -> ``preprocess_input``:
convert to RGB if the mode is not RGB, resize to exactly 224x224 with ``Image.NEAREST`` (``load_img``'s
default interpolation, no aspect-ratio crop), then "caffe" mode: RGB -> BGR, subtract the ImageNet mean
``[103.939, 116.779, 123.68]``, no scaling. ``tests/test_preprocess.py`` pins that we match it exactly.

Where imgq differs, on purpose:
- Large JPEGs are decoded at reduced scale when the worker's ``jpeg_draft`` setting is on (its default):
  see ``load_pixels``.
- EXIF orientation is applied (Keras ignores it, so a phone photo taken upright is classified lying on its
  side). The small resized image is rotated, not the full-size one: the same picture for a fraction of the work.
- 16-bit greyscale is scaled to 8 bits (``>> 8``); Pillow's RGB conversion would clamp it to white.
- Only the formats in IMAGE_FORMATS are ever opened, whatever a file is named; files over
  ``max_file_bytes`` are refused before any decoder runs, and images over ``max_pixels`` from their header,
  before any pixel is decoded (Pillow's own guard does it, at our threshold).
- The resize comes first, then the 16-bit scaling and the RGB conversion. Both are per-pixel, and a nearest
  resize only picks pixels, so the result is Keras' to the pixel, while the full-size image is never
  copied into another mode: the peak memory of a decode is the decoded image, not two or three of it.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from imgq.contract import IMAGE_FORMATS
from imgq.files import open_nonblocking
from imgq.roots import within_roots
from worker import formats
from worker.errors import ImageError, one_line
from worker.memory import decode_budget, webp_cost
from worker.reads import BudgetedFile, ReadBudgetExceeded

TARGET_SIZE = (224, 224)  # (height, width), as Keras' target_size
INTERPOLATION = Image.Resampling.NEAREST  # load_img's default interpolation="nearest"
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


# Image.open(formats=...) only looks among the plugins already registered; register them all now, HEIF too.
Image.init()
formats.register_heif()

# Pillow's bomb guard stays on: some openers check it before they allocate (WebP's decoder allocates its
# canvas when it is created, from a 30-byte header). It raises above 2 x MAX_IMAGE_PIXELS and warns above
# MAX_IMAGE_PIXELS; decode_pixels sets it to max_pixels / 2 so that it raises exactly above max_pixels, and
# the warning, which would now come early, is silenced.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")

_EXIF_ORIENTATION = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def check_allowed(path: str, allowed_roots: tuple[str, ...]) -> str:
    """The real path of ``path`` (symlinks resolved); raises ImageError('forbidden') outside the roots.

    The message says no more than that: never where the path's symlinks lead (that is what the roots keep
    private); the record carries the path as it was submitted.
    """
    real = os.path.realpath(path)
    if not within_roots(real, allowed_roots):
        raise ImageError("forbidden", "outside the allowed roots")
    return real


def load_pixels(path: str, *, allowed_roots: tuple[str, ...] = (), max_pixels: int = 89_478_485,
                max_file_bytes: int = 256 * 1024**2, jpeg_draft: bool = False) -> np.ndarray:
    """Decode ``path`` into a uint8 array of shape (224, 224, 3), RGB, upright.

    ``jpeg_draft``: let libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale (DCT scaling, never below
    224 px a side) before the resize. A 12 MP photo then decodes ~10x faster; the picture is the same
    but the pixels are no longer Keras' exactly (DCT scaling averages where nearest-neighbour picks).

    Raises ImageError with code forbidden, missing, unreadable, not_an_image, too_large or corrupt.
    """
    with checked_file(path, allowed_roots, max_file_bytes) as file:
        return decode_pixels(file, max_pixels=max_pixels, jpeg_draft=jpeg_draft, name=path)


@contextmanager
def checked_file(path: str, allowed_roots: tuple[str, ...] = (),
                 max_file_bytes: int | None = None) -> Iterator[BinaryIO]:
    """``path`` opened for reading once it is known to be an allowed, non-empty regular file of at most
    ``max_file_bytes`` bytes.

    The roots are checked twice: on the path, so that nothing is told about files outside them (not even
    whether they exist), and on the opened descriptor, so that the file read is the file checked: a symlink
    swapped in between the check and the open is caught there.

    Raises ImageError with code forbidden, missing, unreadable, not_an_image or too_large.
    """
    real = check_allowed(path, allowed_roots)
    try:
        file = open(real, "rb", opener=open_nonblocking)  # noqa: SIM115 (closed by the with below)
    except FileNotFoundError:
        raise ImageError("missing", "no such file") from None
    except IsADirectoryError:
        raise ImageError("unreadable", "is a directory, not a file") from None
    except PermissionError:
        raise ImageError("unreadable", "permission denied") from None
    except OSError as exc:
        reason = "symlink loop" if exc.errno == errno.ELOOP else one_line(exc)
        raise ImageError("unreadable", reason) from None
    with file:
        if allowed_roots and not within_roots(opened_path(file.fileno()), allowed_roots):
            raise ImageError("forbidden", "outside the allowed roots")
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ImageError("unreadable", "not a regular file (a pipe, socket or device)")
        if info.st_size == 0:
            raise ImageError("not_an_image", "empty file (0 bytes)")
        if max_file_bytes is not None and info.st_size > max_file_bytes:
            raise ImageError("too_large", f"{info.st_size} bytes is more than {max_file_bytes} (IMGQ_MAX_FILE_BYTES)")
        yield file


def opened_path(fd: int) -> str:
    """The path of the file open as ``fd``, as the kernel knows it: where the open really led.

    Linux tells it in /proc/self/fd. Elsewhere (or without /proc) the answer is the empty string, which
    no root contains: a worker with allowed roots refuses what it cannot verify.
    """
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def decode_pixels(file: BinaryIO, *, max_pixels: int = 89_478_485, jpeg_draft: bool = False,
                  name: str = "") -> np.ndarray:
    """The (224, 224, 3) uint8 RGB pixels of the image in ``file`` (see ``load_pixels``); ``name``, the file's
    name, tells a camera RAW whose content has no mark of its own (worker/formats.py).

    Raises ImageError with code not_an_image, too_large, corrupt or no_preview.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels / 2  # Pillow raises above twice this: see the top of this module
    kind = formats.sniff(file, name)
    allowed = formats.pillow_formats(kind)
    orientation = 1 if kind == formats.HEIF else None  # libheif applies a HEIF's own transforms (formats.py)
    if kind == formats.RAW:
        preview = formats.raw_preview(file, max_pixels)
        file, allowed, orientation = preview.file, preview.formats, preview.orientation
    else:
        _check_webp(file, max_pixels)
    budgeted = BudgetedFile(file)
    try:
        with _open_image(budgeted, max_pixels, allowed, kind) as image:
            _check_size(image, max_pixels)
            if image.format == formats.HEIF:
                formats.check_heif_cost(*image.size, os.fstat(file.fileno()).st_size, max_pixels)
            if jpeg_draft and image.format == "JPEG":
                image.draft(image.mode, (TARGET_SIZE[1], TARGET_SIZE[0]))
            return _to_pixels(image, max_pixels, orientation)
    except ReadBudgetExceeded as exc:
        raise ImageError("corrupt", str(exc)) from None
    except OSError as exc:  # Pillow's "image file is truncated" and kin
        raise ImageError("corrupt", one_line(exc)) from None


def _open_image(file, max_pixels: int, allowed: tuple[str, ...], kind: str) -> Image.Image:
    """``file`` opened by one of the ``allowed`` Pillow plugins, its header read; ``kind``: what
    formats.sniff found (a HEIF or a RAW's preview that no plugin opens is damaged, not another format)."""
    try:
        return Image.open(file, formats=allowed)
    except UnidentifiedImageError:
        if kind == formats.HEIF:
            raise ImageError("corrupt", "a HEIF whose structure libheif cannot read (truncated, damaged)") from None
        if kind == formats.RAW:
            raise ImageError("corrupt", "a camera RAW whose embedded preview cannot be read") from None
        raise ImageError("not_an_image", f"not a supported image ({', '.join(IMAGE_FORMATS)})") from None
    except Image.DecompressionBombError as exc:
        raise _too_large(exc, max_pixels) from None
    except (SyntaxError, ValueError, EOFError) as exc:  # plugins raise these on a damaged header
        raise ImageError("corrupt", one_line(exc)) from None


def _check_size(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError("too_large", f"{width}x{height} is more than {max_pixels} pixels")


def _check_webp(file: BinaryIO, max_pixels: int) -> None:
    """Refuse a WebP that would take more memory to decode than an image of ``max_pixels`` (worker/memory.py)."""
    cost = webp_cost(file, os.fstat(file.fileno()).st_size)
    if cost is None:
        return
    width, height, needed = cost
    if needed < 0:
        raise ImageError("corrupt", "a WebP whose header does not give its size")
    budget = decode_budget(max_pixels)
    if needed > budget:
        raise ImageError("too_large", f"a {width}x{height} WebP takes {needed >> 20} MiB to decode, more than "
                                      f"{budget >> 20} MiB (4 bytes a pixel of IMGQ_MAX_PIXELS)")


def _too_large(exc: Image.DecompressionBombError, max_pixels: int) -> ImageError:
    """Pillow's guard, raised from a header (or a GIF frame, a TIFF tile) before the pixels are allocated."""
    found = _BOMB_PIXELS.search(str(exc))
    return ImageError("too_large", f"{found.group(1) if found else 'its'} pixels is more than {max_pixels} pixels")


def _to_pixels(image: Image.Image, max_pixels: int, orientation: int | None = None) -> np.ndarray:
    """Keras' load_img steps (nearest resize, RGB), then the EXIF orientation on the small image.

    Keras converts to RGB first and resizes second; every conversion here (16-bit scaling, palette lookup,
    CMYK, dropping alpha) maps each pixel alone, and a nearest resize picks pixels without mixing them,
    so the order does not change a pixel, and resizing first converts 224x224 pixels instead of all.
    ``orientation``: the image's own EXIF orientation wins when it says to turn it; else this one (a RAW's
    camera orientation; 1 for a HEIF, which libheif turned already); else none.
    """
    try:
        exif_orientation = image.getexif().get(_EXIF_ORIENTATION, 1) if image.format != formats.HEIF else 1
        orientation = exif_orientation if exif_orientation != 1 else (orientation or 1)
        image.load()
    except Image.DecompressionBombError as exc:
        raise _too_large(exc, max_pixels) from None
    except (SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("corrupt", one_line(exc)) from None
    width_height = (TARGET_SIZE[1], TARGET_SIZE[0])
    if image.size != width_height:
        image = image.resize(width_height, INTERPOLATION)
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_to_eight_bits(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    transpose = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    if transpose is not None:
        image = image.transpose(transpose)
    return np.asarray(image, dtype=np.uint8)


def _sixteen_to_eight_bits(image: Image.Image) -> Image.Image:
    """Scale 16-bit greyscale to 8 bits (Pillow's convert would clamp everything above 255 to white).

    Called on the resized image: int64 at 224x224 is 400 KB, at full size eight bytes per pixel.
    """
    values = np.asarray(image, dtype=np.int64)
    return Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L")


def to_model_input(pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Keras' ``preprocess_input`` for ResNet50 ("caffe"): RGB -> BGR, minus the ImageNet mean, float32.

    ``pixels``: uint8 or float, shape (..., 3), RGB. Writes into ``out`` when given (a batch buffer).
    """
    if out is None:
        out = np.empty(pixels.shape, dtype=np.float32)
    np.subtract(pixels[..., ::-1], CAFFE_MEAN_BGR, out=out, dtype=np.float32)
    return out
