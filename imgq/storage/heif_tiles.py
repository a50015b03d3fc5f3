"""Any tile of a HEIF's primary image, decoded alone by libheif: a cheap look at the picture itself.

A phone's HEIC stores its picture as a grid of separately coded tiles (512x512 on iPhones and Android's
HeifWriter), and libheif (1.19 on) decodes any one of them alone: ``heif_image_handle_decode_image_tile``, with
the image's own transformations (``irot``, ``imir``, ``clap``) applied, so that the tile is the part of the
picture every viewer shows, where it shows it (``Grid``). pillow-heif does not expose that call, so it is made
here through ctypes, into the very libheif pillow-heif loaded into this process (found among the process's mapped
files: this module never imports pillow-heif, which the producer may not have; imgq/storage/heif_thumbnails.py
says why a tile is wanted). Without it (no pillow-heif loaded, a libheif older than 1.19, no /proc) there is no
tile, and callers decode the picture whole.

The file is the caller's, already checked (roots, type, size), read by libheif through its descriptor's /proc path
as LibRaw reads a RAW (imgq/storage/image_kinds.py): the same file, and only what is asked of it (the boxes, a
tile's coded bytes), not the whole of it. The tile's size is known from those boxes before any pixel is decoded,
and checked against the caller's bound."""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image

_COLORSPACE_RGB = 1  # libheif's enum heif_colorspace
_CHROMA_INTERLEAVED_RGB = 10  # enum heif_chroma: 8 bits a sample, R G B interleaved
_CHANNEL_INTERLEAVED = 10  # enum heif_channel


class _Error(ctypes.Structure):
    """struct heif_error, returned by value by every call below."""

    _fields_ = [("code", ctypes.c_int), ("subcode", ctypes.c_int), ("message", ctypes.c_char_p)]


class _Tiling(ctypes.Structure):
    """struct heif_image_tiling (heif_tiling.h, version 1), with room to spare should a later libheif add fields."""

    _fields_ = [("version", ctypes.c_int), ("num_columns", ctypes.c_uint32), ("num_rows", ctypes.c_uint32),
                ("tile_width", ctypes.c_uint32), ("tile_height", ctypes.c_uint32),
                ("image_width", ctypes.c_uint32), ("image_height", ctypes.c_uint32),
                ("top_offset", ctypes.c_uint32), ("left_offset", ctypes.c_uint32),
                ("number_of_extra_dimensions", ctypes.c_uint8), ("extra_dimension_size", ctypes.c_uint32 * 8),
                ("_spare", ctypes.c_uint8 * 256)]


@dataclass(frozen=True)
class Grid:
    """How the primary image is tiled, as shown (libheif's transformations applied): ``columns`` x ``rows`` tiles
    of ``tile_size`` (width, height) over a picture of ``size`` (width, height), the top-left tile ``offset`` (x,
    y) pixels up and left of the picture's corner (a rotated or cropped grid)."""

    columns: int
    rows: int
    tile_size: tuple[int, int]
    size: tuple[int, int]
    offset: tuple[int, int] = (0, 0)

    def box(self, column: int, row: int) -> tuple[int, int, int, int]:
        """What tile (``column``, ``row``) shows of the picture: (left, top, right, bottom), within the picture."""
        left, top = self.corner(column, row)
        return (max(left, 0), max(top, 0), min(left + self.tile_size[0], self.size[0]),
                min(top + self.tile_size[1], self.size[1]))

    def corner(self, column: int, row: int) -> tuple[int, int]:
        """Where tile (``column``, ``row``)'s top-left pixel falls in the picture (negative: in the grid's padding)."""
        return column * self.tile_size[0] - self.offset[0], row * self.tile_size[1] - self.offset[1]


class TiledPicture:
    """The primary image of a HEIF open in libheif, tiled (``grid``), any tile of which decodes alone (``tile``).
    Holds libheif's context (the file's boxes, and a tile's coded bytes while it decodes): close it."""

    def __init__(self, lib, context, handle, grid: Grid):
        self._lib, self._context, self._handle, self.grid = lib, context, handle, grid

    def tile(self, column: int, row: int) -> Image.Image | None:
        """Tile (``column``, ``row``) as shown, 8-bit RGB, or None when libheif cannot decode it."""
        try:
            return _decode_tile(self._lib, self._handle, column, row)
        except _HeifFailed:
            return None

    def close(self) -> None:
        if self._handle:
            self._lib.heif_image_handle_release(self._handle)
            self._handle = None
        if self._context:
            self._lib.heif_context_free(self._context)
            self._context = None

    def __enter__(self) -> TiledPicture:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _HeifFailed(Exception):
    """libheif refused a call: a file it cannot read so, which the full decode will judge."""


def open_tiled(file: BinaryIO, min_tiles: int, max_tile_pixels: int) -> TiledPicture | None:
    """The primary image of the HEIF open as ``file`` (a checked regular file), its tiles to decode alone, or None:
    when it is not split into at least ``min_tiles`` tiles that decode alone (a single coded image is one tile:
    the whole picture), when a tile holds more than ``max_tile_pixels`` pixels, when libheif refuses the file,
    or when no libheif with the tile API is loaded in this process (or no /proc). Nothing is decoded here."""
    lib = _libheif()
    path = f"/proc/self/fd/{file.fileno()}"
    if lib is None or not os.path.exists(path):
        return None
    context, handle = lib.heif_context_alloc(), ctypes.c_void_p()
    picture = TiledPicture(lib, context, handle, Grid(0, 0, (0, 0), (0, 0)))
    try:
        _check(lib.heif_context_read_from_file(context, os.fsencode(path), None))
        _check(lib.heif_context_get_primary_image_handle(context, ctypes.byref(handle)))
        tiling = _Tiling()
        _check(lib.heif_image_handle_get_image_tiling(handle, 1, ctypes.byref(tiling)))
    except _HeifFailed:
        picture.close()
        return None
    picture.grid = _grid(tiling)
    tile_pixels = tiling.tile_width * tiling.tile_height
    if tiling.num_columns * tiling.num_rows < min_tiles or not 0 < tile_pixels <= max_tile_pixels or not (
            tiling.image_width and tiling.image_height):
        picture.close()
        return None
    return picture


def _grid(tiling: _Tiling) -> Grid:
    """The grid as shown. A grid's padding (its tiles' cover beyond the picture) is stored right and below; turned
    or mirrored, it shows left or above, where libheif then reports an offset. libheif 1.23 reports the picture's
    remainder there, not the padding (448 for a 960 px side in 512 px tiles, padded by 64: found by matching each
    tile of the 8 orientations with the full decode), so only whether it is 0 is used: the padding is all there."""
    columns, rows = tiling.num_columns, tiling.num_rows
    width, height = tiling.image_width, tiling.image_height
    offset_x = columns * tiling.tile_width - width if tiling.left_offset else 0
    offset_y = rows * tiling.tile_height - height if tiling.top_offset else 0
    return Grid(columns, rows, (tiling.tile_width, tiling.tile_height), (width, height), (offset_x, offset_y))


def _decode_tile(lib, handle, column: int, row: int) -> Image.Image:
    """The tile at (``column``, ``row``) of the transformed picture, as 8-bit RGB (a copy: libheif's is freed)."""
    decoded = ctypes.c_void_p()
    _check(lib.heif_image_handle_decode_image_tile(handle, ctypes.byref(decoded), _COLORSPACE_RGB,
                                                   _CHROMA_INTERLEAVED_RGB, None, column, row))
    try:
        width = lib.heif_image_get_width(decoded, _CHANNEL_INTERLEAVED)
        height = lib.heif_image_get_height(decoded, _CHANNEL_INTERLEAVED)
        stride = ctypes.c_int()
        plane = lib.heif_image_get_plane_readonly(decoded, _CHANNEL_INTERLEAVED, ctypes.byref(stride))
        if not plane or width <= 0 or height <= 0 or stride.value < 3 * width:
            raise _HeifFailed("no interleaved RGB plane")
        # One copy out of libheif's image, into Pillow's (freed below): at most HEIF_BYTES_PER_PIXEL a pixel with
        # libheif's planes (worker/images/formats.py).
        return Image.frombytes("RGB", (width, height), ctypes.string_at(plane, stride.value * height), "raw", "RGB",
                               stride.value)
    finally:
        lib.heif_image_release(decoded)


def _check(error: _Error) -> None:
    if error.code:
        raise _HeifFailed((error.message or b"").decode(errors="replace"))


def _libheif():
    """The libheif pillow-heif loaded, its tile calls declared; None when there is none or it is older than 1.19.
    Only a library found is remembered (reading the process's map costs ~1 ms with TensorFlow loaded): pillow-heif
    may be imported after a first call."""
    if not _found:
        path = _loaded_libheif()
        if path is None:
            return None
        _found.append(path)
    return _declared(_found[0])


_found: list[str] = []


@functools.cache
def _declared(path: str):
    try:
        lib = ctypes.CDLL(path)  # already mapped: dlopen returns the same library
        _declare(lib)
    except (OSError, AttributeError):  # AttributeError: a symbol missing, libheif before 1.19
        return None
    return lib


def _declare(lib) -> None:
    """The C signatures (libheif's heif_context.h, heif_image_handle.h, heif_image.h, heif_tiling.h)."""
    pointer, error = ctypes.c_void_p, _Error
    for name, restype, argtypes in (
        ("heif_context_alloc", pointer, []),
        ("heif_context_free", None, [pointer]),
        ("heif_context_read_from_file", error, [pointer, ctypes.c_char_p, pointer]),
        ("heif_context_get_primary_image_handle", error, [pointer, ctypes.POINTER(pointer)]),
        ("heif_image_handle_release", None, [pointer]),
        ("heif_image_handle_get_image_tiling", error, [pointer, ctypes.c_int, ctypes.POINTER(_Tiling)]),
        ("heif_image_handle_decode_image_tile", error, [pointer, ctypes.POINTER(pointer), ctypes.c_int, ctypes.c_int,
                                                        pointer, ctypes.c_uint32, ctypes.c_uint32]),
        ("heif_image_get_width", ctypes.c_int, [pointer, ctypes.c_int]),
        ("heif_image_get_height", ctypes.c_int, [pointer, ctypes.c_int]),
        ("heif_image_get_plane_readonly", ctypes.c_void_p, [pointer, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]),
        ("heif_image_release", None, [pointer]),
    ):
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes


def _loaded_libheif() -> str | None:
    """The path of the libheif mapped into this process (pillow-heif's own copy when several are), or None."""
    try:
        with open("/proc/self/maps") as maps:
            fields = [line.split(None, 5) for line in maps]
    except OSError:
        return None
    paths = {parts[5].strip() for parts in fields if len(parts) == 6}  # address, perms, offset, dev, inode, path
    found = sorted(path for path in paths if os.path.basename(path).startswith("libheif"))
    pillow_heifs = [path for path in found if "pillow_heif" in path]
    if len(pillow_heifs) == 1:
        return pillow_heifs[0]
    return found[0] if len(found) == 1 else None
