"""Photos as phones and cameras leave them, made on the spot: HEIC (Debian's heif-enc, from a JPEG: one coded
image; or pillow-heif, for the grids of tiles phones write and the transforms heif-enc does not) and DNG (a
minimal TIFF writer here: a 16-bit CFA raw image in a SubIFD and, unless left out, a JPEG preview as IFD0, as
cameras and Adobe's converter write them)."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

HEIF_ENC = shutil.which("heif-enc")
NO_HEIF_ENC = "heif-enc is missing (Debian's libheif-examples; `make install-test` installs it as root)"


def heic_from(jpeg: Path, out: Path, quality: int = 90, *params: str, timeout: float = 300,
              thumbnail: int | None = None) -> Path:
    """``out``: the JPEG re-encoded as HEIC by libheif's heif-enc (HEVC), as a phone's twin of the photo.
    ``params``: x265 settings (``preset=ultrafast``: a 12 MP photo in seconds, not minutes). ``thumbnail``:
    embed a thumbnail of at most that many pixels a side, as phones do (an iPhone's is 320x240)."""
    settings = [arg for param in params for arg in ("-p", param)]
    thumb = ["-t", str(thumbnail)] if thumbnail else []
    subprocess.run([HEIF_ENC, "-q", str(quality), *thumb, *settings, "-o", str(out), str(jpeg)], check=True,
                   capture_output=True, timeout=timeout)
    return out


def heic_grid(picture: Image.Image, out: Path, *, tile: int = 512, thumbnail: int | None = 320,
              quality: int = 90, also: Image.Image | None = None, orientation: int = 1) -> Path:
    """``out``: ``picture`` as phones write it (pillow-heif): a grid of ``tile`` px tiles, each coded alone, with a
    thumbnail of at most ``thumbnail`` px a side (libheif's, nearest-neighbour scaled). ``also``: a second image
    in the file, of its own, with its own thumbnail (see ``heic_with_thumbnail_of``). ``orientation`` (EXIF's):
    stored as the picture's and the thumbnail's ``irot``/``imir``, as iPhones turn their photos."""
    import pillow_heif

    pillow_heif.register_heif_opener(thumbnails=True)
    more: dict = {"save_all": True, "append_images": [also]} if also is not None else {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        more["exif"] = exif.tobytes()
    picture.save(out, format="HEIF", quality=quality, tile_size=tile, thumbnails=[thumbnail] if thumbnail else [],
                 enc_params={"preset": "ultrafast"}, **more)  # x265's fastest: seconds, not tens of seconds
    return out


def heic_with_thumbnail_of(picture: Image.Image, other: Image.Image, out: Path, **grid) -> Path:
    """``out``: a HEIC whose primary image is ``picture`` and whose thumbnail is ``other``'s (same size), as a tool
    that edits a photo and keeps its old thumbnail leaves it: both pictures are written (``heic_grid``), each
    with its thumbnail, then the two thumbnail references (``iref`` ``thmb``: thumbnail item -> its picture)
    are crossed in place."""
    data = bytearray(heic_grid(picture, out, also=other, **grid).read_bytes())
    references = [at for at, kind in _iref_entries(data) if kind == b"thmb"]
    assert len(references) == 2, "expected a thumbnail for each of the two pictures"
    first, second = (at + 12 for at in references)  # size, type, from_item_ID, count (16 bits each): the target
    data[first:first + 2], data[second:second + 2] = data[second:second + 2], data[first:first + 2]
    out.write_bytes(bytes(data))
    return out


def _iref_entries(data: bytearray) -> list[tuple[int, bytes]]:
    """(offset, type) of each reference box in the ``iref`` of a HEIF's ``meta`` (version 0: 16-bit item ids)."""
    meta = _child(data, 0, len(data), b"meta")
    iref = _child(data, meta + 12, meta + struct.unpack_from(">I", data, meta)[0], b"iref")
    assert data[iref + 8] == 0, "a version 1 iref (32-bit item ids)"
    entries, at, end = [], iref + 12, iref + struct.unpack_from(">I", data, iref)[0]
    while at < end:
        size, kind = struct.unpack_from(">I4s", data, at)
        entries.append((at, kind))
        at += size
    return entries


def _child(data: bytearray, start: int, end: int, kind: bytes) -> int:
    """The offset of the first box of ``kind`` among the boxes from ``start`` to ``end`` (32-bit sizes)."""
    at = start
    while at < end:
        size, found = struct.unpack_from(">I4s", data, at)
        if found == kind:
            return at
        at += size
    raise AssertionError(f"no {kind!r} box")


def heic_declaring(source: Path, out: Path, width: int, height: int) -> Path:
    """``out``: the HEIC ``source`` whose image-size property (``ispe``) declares ``width`` x ``height``."""
    data = bytearray(source.read_bytes())
    at = data.index(b"ispe")
    data[at + 8:at + 16] = struct.pack(">II", width, height)  # after the box type: version/flags, width, height
    out.write_bytes(bytes(data))
    return out


BYTE, ASCII, SHORT, LONG, RATIONAL, SRATIONAL = 1, 2, 3, 4, 5, 10
_SIZES = {BYTE: 1, ASCII: 1, SHORT: 2, LONG: 4, RATIONAL: 8, SRATIONAL: 8}
_FORMATS = {BYTE: "B", ASCII: "B", SHORT: "H", LONG: "I", RATIONAL: "I", SRATIONAL: "i"}


def _ifd(entries: dict[int, tuple[int, list]], at: int, data: bytearray, next_ifd: int = 0) -> bytes:
    """IFD bytes at offset ``at``; values over 4 bytes are appended to ``data`` (which follows the IFD)."""
    size = 2 + 12 * len(entries) + 4
    out = bytearray(struct.pack("<H", len(entries)))
    for tag in sorted(entries):
        kind, values = entries[tag]
        raw = struct.pack(f"<{len(values)}{_FORMATS[kind]}", *values)
        count = len(values) // 2 if kind in (RATIONAL, SRATIONAL) else len(values)
        if len(raw) <= 4:
            field = raw.ljust(4, b"\0")
        else:
            field = struct.pack("<I", at + size + len(data))
            data += raw + (b"\0" if len(raw) % 2 else b"")
        out += struct.pack("<HHI", tag, kind, count) + field
    out += struct.pack("<I", next_ifd)
    return bytes(out)


def dng(preview: Image.Image | bytes | None, *, orientation: int = 1, raw_size=(64, 48)) -> bytes:
    """A DNG whose IFD0 is the preview (a JPEG, or ``preview`` saved as one; NewSubFileType 1) and whose SubIFD
    is a 16-bit RGGB raw image; without a preview, IFD0 is the raw image. ``orientation``: the EXIF tag."""
    width, height = raw_size
    rng = np.random.default_rng(0)
    cfa = rng.integers(0, 4096, size=(height, width), dtype=np.uint16).tobytes()
    common = {
        271: (ASCII, list(b"imgq\0")), 272: (ASCII, list(b"test\0")), 274: (SHORT, [orientation]),
        50706: (BYTE, [1, 4, 0, 0]), 50707: (BYTE, [1, 1, 0, 0]), 50708: (ASCII, list(b"imgq test\0")),
        50721: (SRATIONAL, [1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1]), 50778: (SHORT, [21]),
    }
    raw_ifd = {254: (LONG, [0]), 256: (LONG, [width]), 257: (LONG, [height]), 258: (SHORT, [16]),
               259: (SHORT, [1]), 262: (SHORT, [32803]), 273: (LONG, [0]), 277: (SHORT, [1]),
               278: (LONG, [height]), 279: (LONG, [len(cfa)]), 33421: (SHORT, [2, 2]),
               33422: (BYTE, [0, 1, 1, 2]), 50717: (LONG, [4095])}
    if preview is None:
        return _tiff([{**common, **raw_ifd}], [cfa])
    if isinstance(preview, Image.Image):
        buffer = io.BytesIO()
        preview.save(buffer, "JPEG", quality=95)
        preview = buffer.getvalue()
    jpeg = preview
    width, height = _jpeg_size(jpeg)
    ifd0 = {**common, 254: (LONG, [1]), 256: (LONG, [width]), 257: (LONG, [height]),
            258: (SHORT, [8, 8, 8]), 259: (SHORT, [7]), 262: (SHORT, [6]), 273: (LONG, [0]),
            277: (SHORT, [3]), 278: (LONG, [height]), 279: (LONG, [len(jpeg)]), 330: (LONG, [0])}
    return _tiff([ifd0, raw_ifd], [jpeg, cfa], sub_ifd=True)


def _jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """A baseline or progressive JPEG's size from its frame header (not Pillow: it may be a bomb on purpose)."""
    at = max(jpeg.find(b"\xff\xc0"), jpeg.find(b"\xff\xc2"))
    height, width = struct.unpack(">HH", jpeg[at + 5:at + 9])
    return width, height


def _tiff(ifds: list[dict], strips: list[bytes], sub_ifd: bool = False) -> bytes:
    """IFDs laid out one after the other (the second as IFD0's SubIFD when ``sub_ifd``), then the strips."""
    # Two passes: the first learns the sizes, the second writes the real offsets.
    offsets = [0] * len(ifds)
    body = b""
    for _ in range(2):
        at = 8
        blobs = []
        for i, entries in enumerate(ifds):
            offsets[i] = at
            data = bytearray()
            blob = _ifd(entries, at, data)
            blobs.append(blob + data)
            at += len(blob) + len(data)
        strip_at = at
        for i, entries in enumerate(ifds):
            entries[273] = (LONG, [strip_at])
            strip_at += len(strips[i])
            if sub_ifd and i == 0:
                entries[330] = (LONG, [offsets[1]])
        body = b"".join(blobs)
    return b"II*\0" + struct.pack("<I", 8) + body + b"".join(strips)
