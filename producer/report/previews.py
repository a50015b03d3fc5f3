"""The thumbnails of a report: each image opened as the worker opens it, never beyond what its header allows.

A report reads the images its records name, on the machine where it runs, long after the worker did: a file may
have been replaced since by a link elsewhere, a pipe, a device or a far bigger picture, an object deleted or
refused. So each is opened through its byte source (imgq/storage/locate.py: a local file, an s3:// object, one
GET) with the same rules as in the worker (worker/images/preprocess.py): the allowed roots (IMGQ_ALLOWED_ROOTS) on
the real path or the URL, an open that never blocks, regular files only, at most IMGQ_MAX_FILE_BYTES (an object's
size from its reply's headers, before its body is read), and at most IMGQ_MAX_PIXELS by the header before any pixel
is decoded. An image that cannot be fetched (missing, forbidden, over the cap) says why in one line
(``Preview.problem``); a store that does not answer raises SourceUnavailable, for the report to stop asking it
(``Fetches``). The kind is told by content (imgq/storage/image_kinds.py): HEIC opens through pillow-heif (its
embedded thumbnail shown only when that shows the picture, as the worker classifies it) and a camera RAW shows
its embedded JPEG preview through rawpy, where those libraries are installed (the worker
extra); elsewhere their cards say "no preview", as for a file that cannot be opened.
"""

from __future__ import annotations

import functools
import io
import threading
from dataclasses import dataclass

from PIL import Image, ImageOps

from imgq.contract import PILLOW_FORMATS
from imgq.settings import Settings
from imgq.storage.errors import ImageError, SourceUnavailable, one_line
from imgq.storage.heif_thumbnails import shows_picture, tiled_picture
from imgq.storage.image_kinds import EXIF_ORIENTATION, HEIF, ORIENTATION_FOR_FLIP, RAW, open_in_libraw, sniff
from imgq.storage.locate import source_for

THUMB_SIZE = 160  # longest side of a thumbnail, in pixels


@dataclass(frozen=True)
class PreviewLimits:
    """What a report may read of one image: IMGQ_ALLOWED_ROOTS, IMGQ_MAX_FILE_BYTES, IMGQ_MAX_PIXELS."""

    allowed_roots: tuple[str, ...] = Settings.allowed_roots
    max_file_bytes: int = Settings.max_file_bytes
    max_pixels: int = Settings.max_pixels

    @classmethod
    def from_settings(cls, settings: Settings) -> PreviewLimits:
        return cls(settings.allowed_roots, settings.max_file_bytes, settings.max_pixels)


@dataclass(frozen=True)
class Preview:
    """What a report shows of one image: its thumbnail, or None and, when the image could not be fetched at all,
    ``problem``: why, in one line (``missing: no such object``); "" for one fetched and not shown (damaged, or
    of a kind whose library is not installed here)."""

    picture: Image.Image | None
    problem: str = ""


def preview(location: str, limits: PreviewLimits) -> Preview:
    """The thumbnail of the image at ``location`` (a path or an s3:// URL): RGB, upright, at most THUMB_SIZE a
    side, read through its byte source within ``limits``. Raises SourceUnavailable when its store does not
    answer (after its client's retries): nothing is known of the image, and the next one would wait as long."""
    try:
        with source_for(location).open(location, limits.allowed_roots, limits.max_file_bytes) as file:
            picture = _decoded(file, location, limits.max_pixels)
    except ImageError as exc:
        return Preview(None, f"{exc.code}: {exc.message}")
    except SourceUnavailable:
        raise
    except Exception:  # Pillow and the codecs raise many kinds for a damaged file: a preview is not worth a report
        return Preview(None)
    if picture is not None:
        picture.thumbnail((THUMB_SIZE, THUMB_SIZE))
    return Preview(picture)


def thumbnail(location: str, limits: PreviewLimits) -> Image.Image | None:
    """``preview``'s thumbnail, or None when it cannot be shown: outside the roots, missing, not a regular file,
    over a limit, damaged, of a kind whose library is not installed here, or in a store that does not answer."""
    try:
        return preview(location, limits).picture
    except SourceUnavailable:
        return None


def _decoded(file, name: str, max_pixels: int, orientation: int = 1) -> Image.Image | None:
    """The picture in ``file``, upright, decoded at a reduced scale where the format allows; ``orientation``:
    a RAW's camera orientation, for a preview without an EXIF orientation of its own (as the worker turns it)."""
    kind = sniff(file, name)
    if kind == RAW:
        found = _raw_preview(file)
        return None if found is None else _decoded(found[0], "", max_pixels, found[1])
    formats: tuple[str, ...] = PILLOW_FORMATS
    if kind == HEIF:
        if not _heif_registered():
            return None
        formats = (HEIF,)
    with Image.open(file, formats=formats) as image:
        width, height = image.size  # from the header: nothing decoded yet
        if width * height > max_pixels:
            return None
        if kind == HEIF:  # libheif turned it already; its EXIF orientation is informational (worker/images/formats.py)
            return _heif_picture(image, file, max_pixels)
        image.draft("RGB", (THUMB_SIZE * 2, THUMB_SIZE * 2))  # JPEG: decode at a reduced scale
        exif = image.getexif()
        if exif.get(EXIF_ORIENTATION, 1) == 1 and orientation != 1:
            exif[EXIF_ORIENTATION] = orientation  # the camera's, for a RAW preview that says nothing
        return ImageOps.exif_transpose(image).convert("RGB")


def _heif_picture(image: Image.Image, file, max_pixels: int) -> Image.Image:
    """The picture of a HEIF just opened from ``file``, as every viewer shows it: its embedded thumbnail (when one
    is at least twice THUMB_SIZE a side) only if that agrees with a tile of its primary image, as the worker
    takes it (imgq/storage/heif_thumbnails.py); else, or when the thumbnail shows another picture, the primary
    image decoded whole."""
    side = THUMB_SIZE * 2
    boxes = [box for box in image.info.get("thumbnails") or [] if isinstance(box, int)]
    picture = tiled_picture(file, max_pixels) if boxes and max(boxes) >= side else None
    if picture is None:
        return image.convert("RGB")
    with picture:
        if image.draft("RGB", (side, side)) is None:
            return image.convert("RGB")
        if shows_picture(image, picture):
            return image.convert("RGB")
    file.seek(0)  # the thumbnail shows another picture: the picture itself, opened again without draft
    with Image.open(file, formats=(HEIF,)) as whole:
        return whole.convert("RGB")


@functools.cache  # once a process: the report's threads ask for every HEIF
def _heif_registered() -> bool:
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener(thumbnails=True)  # as the worker does: draft may then take a thumbnail
    return True


def _raw_preview(file) -> tuple[io.BytesIO, int] | None:
    """The embedded JPEG preview of a camera RAW and the camera's orientation (LibRaw reads the metadata and the
    preview only), or None."""
    try:
        import rawpy
    except ImportError:
        return None
    raw = rawpy.RawPy()
    try:
        open_in_libraw(raw, file)
        thumb = raw.extract_thumb()
        orientation = ORIENTATION_FOR_FLIP.get(raw.sizes.flip, 1)
    finally:
        raw.close()
    if thumb.format != rawpy.ThumbFormat.JPEG:  # a bitmap preview: rare, and the worker's to decode
        return None
    return io.BytesIO(bytes(thumb.data)), orientation


class Fetches:
    """The previews of one report, made by many threads: once a store does not answer, its other images are not
    asked for (each would wait through the client's retries again); their problem says so."""

    def __init__(self, limits: PreviewLimits):
        self.limits = limits
        self._away: dict[int, str] = {}  # id of a byte source -> why it was given up
        self._lock = threading.Lock()

    def preview(self, location: str) -> Preview:
        """``preview(location)``, or a Preview with its problem when its store did not answer, now or before."""
        source = source_for(location)
        with self._lock:
            away = self._away.get(id(source))
        if away is not None:
            return Preview(None, f"not fetched: {away}")
        try:
            return preview(location, self.limits)
        except SourceUnavailable as exc:
            with self._lock:
                self._away.setdefault(id(source), f"its store did not answer for an earlier image ({one_line(exc)})")
            return Preview(None, f"unavailable: {one_line(exc)}")
