"""From an image path to the model's input (ResNet50's by default), following Keras' recipe, with every failure
named.

Keras' recipe is ``load_img(path, target_size=(224, 224))`` -> ``img_to_array`` -> ``preprocess_input``:
convert to RGB if the mode is not RGB, resize to exactly 224x224 with ``Image.NEAREST`` (``load_img``'s
default interpolation, no aspect-ratio crop), then "caffe" mode: RGB -> BGR, subtract the ImageNet mean
``[103.939, 116.779, 123.68]``, no scaling. ``tests/test_preprocess.py`` pins that we match it exactly.

Where imgq differs, on purpose:
- Large JPEGs are decoded at reduced scale when the worker's ``jpeg_draft`` setting is on (its default):
  see ``load_pixels``. With it, a HEIC with an embedded thumbnail at least the model's input a side is
  classified from that thumbnail when the thumbnail shows the picture (worker/images/formats.py); Keras cannot
  open HEIC at all.
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

import os
import re
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from imgq.contract import IMAGE_FORMATS
from imgq.storage import image_kinds
from imgq.storage.errors import ImageError, one_line
from imgq.storage.locate import source_for
from worker.images import formats
from worker.images.memory import decode_budget, webp_cost
from worker.images.reads import BudgetedFile, ReadBudgetExceeded

TARGET_SIZE = (224, 224)  # (height, width), as Keras' target_size: ResNet50's, the default model's
INTERPOLATION = Image.Resampling.NEAREST  # load_img's default interpolation="nearest"
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC, "hamming": Image.Resampling.HAMMING,
                  "box": Image.Resampling.BOX, "lanczos": Image.Resampling.LANCZOS}  # load_img's names


@dataclass(frozen=True)
class Target:
    """What a model's input needs from a picture: ``size`` (height, width), ``channels`` (1: greyscale as
    load_img(color_mode="grayscale") makes it, 3: RGB), ``resize`` (squash: load_img's stretch; crop:
    load_img(keep_aspect_ratio=True)'s centred crop) and ``interpolation`` (load_img's names). The default
    is ResNet50's: 224x224 RGB, squashed, nearest."""

    size: tuple[int, int] = TARGET_SIZE
    channels: int = 3
    resize: str = "squash"
    interpolation: str = "nearest"

    @classmethod
    def of(cls, spec) -> Target:
        """The target of an imgq.models.spec.ModelSpec (complete: its input size known)."""
        return cls(tuple(spec.input_size), spec.channels, spec.resize, spec.interpolation)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self.size, self.channels)


RESNET50 = Target()


# Image.open(formats=...) only looks among the plugins already registered; register them all now, HEIF too.
Image.init()
formats.register_heif()

# Pillow's bomb guard stays on: some openers check it before they allocate (WebP's decoder allocates its
# canvas when it is created, from a 30-byte header). It raises above 2 x MAX_IMAGE_PIXELS and warns above
# MAX_IMAGE_PIXELS; decode_pixels sets it to max_pixels / 2 so that it raises exactly above max_pixels, and
# the warning, which would now come early, is silenced.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")

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


def load_pixels(path: str, *, allowed_roots: tuple[str, ...] = (), max_pixels: int = 89_478_485,
                max_file_bytes: int = 256 * 1024**2, jpeg_draft: bool = False, target: Target = RESNET50) -> np.ndarray:
    """Decode ``path`` into a uint8 array of ``target.shape`` ((224, 224, 3) RGB by default), upright.

    ``jpeg_draft``: let libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale (DCT scaling, never below
    224 px a side) before the resize. A 12 MP photo then decodes ~10x faster; the picture is the same
    but the pixels are no longer Keras' exactly (DCT scaling averages where nearest-neighbour picks).

    Raises ImageError with code forbidden, missing, unreadable, not_an_image, too_large or corrupt.
    """
    with source_for(path).open(path, allowed_roots, max_file_bytes) as file:
        return decode_pixels(file, max_pixels=max_pixels, jpeg_draft=jpeg_draft, target=target, name=path)


def decode_pixels(file: BinaryIO, *, max_pixels: int = 89_478_485, jpeg_draft: bool = False,
                  target: Target = RESNET50, name: str = "") -> np.ndarray:
    """The ``target.shape`` uint8 pixels of the image in ``file`` (see ``load_pixels``); ``name``, the file's
    name, tells a camera RAW whose content has no mark of its own (worker/images/formats.py).

    Raises ImageError with code not_an_image, too_large, corrupt or no_preview.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels / 2  # Pillow raises above twice this: see the top of this module
    kind = image_kinds.sniff(file, name)
    allowed = formats.pillow_formats(kind)
    orientation = 1 if kind == image_kinds.HEIF else None  # libheif applies a HEIF's own transforms (formats.py)
    if kind == image_kinds.RAW:
        preview = formats.raw_preview(file, max_pixels)
        file, allowed, orientation = preview.file, preview.formats, preview.orientation
    else:
        _check_webp(file, max_pixels)
    try:
        try:
            return _decoded(file, max_pixels, allowed, kind, jpeg_draft, target, orientation)
        except formats.ThumbnailNotThePicture:
            # A HEIF whose thumbnail shows another picture: the one every viewer shows is classified, decoded whole.
            file.seek(0)
            return _decoded(file, max_pixels, allowed, kind, False, target, orientation)
    except ReadBudgetExceeded as exc:
        raise ImageError("corrupt", str(exc)) from None
    except OSError as exc:  # Pillow's "image file is truncated" and kin
        raise ImageError("corrupt", one_line(exc)) from None
    except RuntimeError as exc:  # libheif's own limits, in imgq's words; anything else is unexpected
        refused = formats.over_libheif_limit(exc)
        if refused is None:
            raise
        raise refused from None


def _decoded(file: BinaryIO, max_pixels: int, allowed: tuple[str, ...], kind: str, jpeg_draft: bool, target: Target,
             orientation: int | None) -> np.ndarray:
    """The target's pixels of the image in ``file``, opened by one of the ``allowed`` plugins (see decode_pixels).

    Raises formats.ThumbnailNotThePicture (a HEIF's thumbnail, with ``jpeg_draft``), and what decode_pixels maps.
    """
    with _open_image(BudgetedFile(file), max_pixels, allowed, kind) as image:
        _check_size(image, max_pixels)
        # Draft decoding: the picture decoded is at least the model's input a side, so the resize never
        # enlarges it. JPEG: libjpeg's DCT scaling. HEIF: its embedded thumbnail when that shows the picture
        # (worker/images/formats.py), chosen before the memory check, which then applies to what is decoded.
        side = max(target.size)
        if image.format == image_kinds.HEIF:
            if not (jpeg_draft and formats.heif_draft(image, file, side, max_pixels)):
                formats.check_heif_cost(*image.size, file_size(file), max_pixels)
        elif jpeg_draft and image.format == "JPEG":
            image.draft(image.mode, (side, side))
        return _to_pixels(image, max_pixels, target, orientation)


def _open_image(file, max_pixels: int, allowed: tuple[str, ...], kind: str) -> Image.Image:
    """``file`` opened by one of the ``allowed`` Pillow plugins, its header read; ``kind``: what
    image_kinds.sniff found (a HEIF or a RAW's preview that no plugin opens is damaged, not another format)."""
    try:
        return Image.open(file, formats=allowed)
    except UnidentifiedImageError:
        if kind == image_kinds.HEIF:
            raise ImageError("corrupt", "a HEIF whose structure libheif cannot read (truncated, damaged)") from None
        if kind == image_kinds.RAW:
            raise ImageError("corrupt", "a camera RAW whose embedded preview cannot be read") from None
        raise ImageError("not_an_image", f"not a supported image ({', '.join(IMAGE_FORMATS)})") from None
    except Image.DecompressionBombError as exc:
        raise _too_large(exc, max_pixels) from None
    except (SyntaxError, ValueError, EOFError) as exc:  # plugins raise these on a damaged header
        raise ImageError("corrupt", one_line(exc)) from None


def file_size(file: BinaryIO) -> int:
    """The size of the open ``file``, its position kept: its descriptor's for a file, its end's offset for one
    held in memory (an s3:// object, imgq/storage/s3.py, is an io.BytesIO: no descriptor)."""
    try:
        return os.fstat(file.fileno()).st_size
    except (AttributeError, OSError):  # io.UnsupportedOperation is an OSError
        here = file.tell()
        end = file.seek(0, os.SEEK_END)
        file.seek(here)
        return end


def _check_size(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError("too_large", f"{width}x{height} is more than {max_pixels} pixels")


def _check_webp(file: BinaryIO, max_pixels: int) -> None:
    """Refuse a WebP that would take more memory to decode than an image of ``max_pixels`` (worker/images/memory.py)."""
    cost = webp_cost(file, file_size(file))
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


def _to_pixels(image: Image.Image, max_pixels: int, target: Target = RESNET50,
               orientation: int | None = None) -> np.ndarray:
    """Keras' load_img steps (resize, RGB or greyscale), then the EXIF orientation on the small image.

    Keras converts first and resizes second. With nearest (its default), every conversion here (16-bit
    scaling, palette lookup, CMYK, dropping alpha, RGB to grey) maps each pixel alone, and a nearest resize
    picks pixels without mixing them, so the order does not change a pixel, and resizing first converts
    the target's pixels instead of all. Other interpolations mix pixels: those convert first, as Keras does.
    ``orientation``: the image's own EXIF orientation wins when it says to turn it; else this one (a RAW's
    camera orientation; 1 for a HEIF, which libheif turned already); else none.
    """
    try:
        heif = image.format == image_kinds.HEIF
        exif_orientation = 1 if heif else image.getexif().get(image_kinds.EXIF_ORIENTATION, 1)
        orientation = exif_orientation if exif_orientation != 1 else (orientation or 1)
        image.load()
    except Image.DecompressionBombError as exc:
        raise _too_large(exc, max_pixels) from None
    except (SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("corrupt", one_line(exc)) from None
    height, width = target.size
    if orientation in _SWAPS_AXES:  # resized lying down, then turned upright: the target lies down too
        height, width = width, height
    nearest = target.interpolation == "nearest"
    if not nearest:
        image = _converted(image, target.channels)
    image = _resized(image, (width, height), target)
    if nearest:
        image = _converted(image, target.channels)
    transpose = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    if transpose is not None:
        image = image.transpose(transpose)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels if target.channels == 3 else pixels[..., None]


_SWAPS_AXES = {5, 6, 7, 8}


def _resized(image: Image.Image, width_height: tuple[int, int], target: Target) -> Image.Image:
    """load_img's resize: the whole picture (squash), or its centred box of the target's aspect ratio (crop,
    load_img's keep_aspect_ratio=True, with its integer arithmetic)."""
    resample = INTERPOLATIONS[target.interpolation]
    if target.resize == "crop":
        width, height = image.size
        target_width, target_height = width_height
        crop_height = min(height, (width * target_height) // target_width)
        crop_width = min(width, (height * target_width) // target_height)
        top, left = (height - crop_height) // 2, (width - crop_width) // 2
        return image.resize(width_height, resample, box=(left, top, left + crop_width, top + crop_height))
    return image if image.size == width_height else image.resize(width_height, resample)


def _converted(image: Image.Image, channels: int) -> Image.Image:
    """RGB, or 8-bit greyscale ("L"); 16-bit greyscale scaled to 8 bits either way."""
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_to_eight_bits(image)
    mode = "RGB" if channels == 3 else "L"
    return image if image.mode == mode else image.convert(mode)


def _sixteen_to_eight_bits(image: Image.Image) -> Image.Image:
    """Scale 16-bit greyscale to 8 bits (Pillow's convert would clamp everything above 255 to white).

    Called on the resized image: int64 at 224x224 is 400 KB, at full size eight bytes per pixel.
    """
    values = np.asarray(image, dtype=np.int64)
    return Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L")


def to_model_input(pixels: np.ndarray, out: np.ndarray | None = None, preprocessing: str = "caffe") -> np.ndarray:
    """Keras' ``preprocess_input`` of the model's family, in float32 (imgq.models.spec.PREPROCESSINGS):

    - caffe (ResNet50): RGB -> BGR, minus the ImageNet mean;
    - tf (ResNet50V2): x / 127.5 - 1;
    - torch: x / 255, minus the mean, divided by the deviation, per RGB channel;
    - none (models that rescale inside, such as EfficientNetV2, ConvNeXt, MobileNetV3): the pixels as floats.

    Each step is Keras' own numpy step, in its order, so the result is Keras' to the bit
    (tests/test_preprocess.py). ``pixels``: uint8 or float, shape (..., channels). Writes into ``out`` when
    given (a batch buffer).
    """
    if out is None:
        out = np.empty(pixels.shape, dtype=np.float32)
    if preprocessing == "caffe":
        np.subtract(pixels[..., ::-1], CAFFE_MEAN_BGR, out=out, dtype=np.float32)
        return out
    out[...] = pixels
    if preprocessing == "tf":
        out /= 127.5
        out -= 1.0
    elif preprocessing == "torch":
        out /= 255.0
        for channel in range(3):
            out[..., channel] -= TORCH_MEAN[channel]
            out[..., channel] /= TORCH_STD[channel]
    elif preprocessing != "none":
        raise ValueError(f"Expected a preprocessing among caffe, tf, torch, none. Received: {preprocessing!r}")
    return out
