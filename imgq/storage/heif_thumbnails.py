"""Whether a HEIF's embedded thumbnail shows the picture every viewer shows: its primary image.

A thumbnail is an image item of its own: nothing ties its pixels to the primary image's. A tool that edits the
picture and keeps the old thumbnail, or a file made so on purpose, shows one picture in every viewer and another
in its thumbnail. pillow-heif's draft checks what the boxes say (size, aspect ratio, rotation, crop, colour
profile), never the pixels; so the worker (worker/images/formats.py) and the report (producer/report/previews.py)
take a thumbnail only when it agrees with a piece of the primary image decoded alone: one tile of the grid phones
write (imgq/storage/heif_tiles.py). A primary image coded whole (one tile, as libheif's heif-enc writes it) cannot
be looked at for less than its full decode; its thumbnail is never taken.

The check (``shows_picture``): the tile is the one whose part of the thumbnail has the most structure (the
largest spread of its grey levels at COMPARE_SIDE x COMPARE_SIDE), where another picture is least likely to
agree by chance (a sky agrees with any sky); a thumbnail with less than MIN_STRUCTURE there is not checked, and
not taken. Tile and thumbnail part, both reduced to COMPARE_SIDE x COMPARE_SIDE grey levels (area averages),
must differ by at most MAX_DISTANCE on average (0-255), the thumbnail's part shifted by up to half a thumbnail
pixel (SHIFTS): libheif scales its thumbnails by nearest neighbour from the top-left corner of each pixel, half a
pixel off an area average. libheif applies the image's transformations to both (pillow-heif's draft takes only a
thumbnail turned, mirrored and cropped as the primary image), so both are compared as shown.

The bounds are measured (python -m bench.heic_thumbnails, 2026-12-07): the 250 photos of /work/shared/photos made
12 MP phone-like (bench/phone.py: 4032x3024 with grain, in 512 px tiles) and, for fine detail, each repeated at
its own resolution over 4032x3024; thumbnails 320x240, libheif's (nearest neighbour) or smooth (Lanczos); tiles and
thumbnails HEVC-coded (x265, quality 90). Each set of 250 pictures, each thumbnail kind:

- a true thumbnail: at most 8.73 for the phone-like photos (4.80 smooth); libheif's thumbnails of the
  fine-detail pictures alias, up to 13.81 (2 of 250 over 11: those are decoded whole; 5.70 smooth);
- another photo's thumbnail (each of the 250 x 249 pairs): at least 15.17 (16.69 smooth); 11.72 between the
  fine-detail pictures (12.39 smooth). None of the 249 000 pairs is within MAX_DISTANCE;
- the most structured part of a thumbnail: at least 24.65 for the phone-like photos; 10.78 for the fine-detail
  ones, 2 of 250 below 14 (decoded whole).

The first design compared the centre tile at 16x16 without shifts: true thumbnails up to 28.5, other photos' down
to 5.9 (flat centres agree): no bound separated them. MAX_DISTANCE = 11 lies below every wrong pair measured and
above every true thumbnail but the 2 aliased ones. MIN_STRUCTURE = 14: with less spread, a featureless primary
image (one grey, the thumbnail's mean there) would come within MAX_DISTANCE (its distance is the part's mean
absolute deviation, about 0.8 of the spread). What it cannot tell: pictures that agree where they are compared (a
photo edited elsewhere, or a file crafted to agree on that tile): a thumbnail is checked by a sample, not pixel by
pixel.
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np
from PIL import Image

from imgq.storage.heif_tiles import Grid, TiledPicture, open_tiled

COMPARE_SIDE = 8  # a 512 px tile of a 12 MP photo is ~40 px of a 320 px thumbnail: cells of 5x5 thumbnail pixels
MAX_DISTANCE = 11.0  # mean absolute grey difference; measured, see above
MIN_STRUCTURE = 14.0  # standard deviation of the thumbnail part's grey levels; see above
SHIFTS = (-0.5, 0.0, 0.5)  # thumbnail pixels, across and down
MIN_TILES = 4  # a tile costs at most a quarter of the full decode: below that, the check is not worth making


def tiled_picture(file: BinaryIO, max_tile_pixels: int) -> TiledPicture | None:
    """The primary image of the HEIF open as ``file``, to check a thumbnail against, or None when no tile of it can
    be had for a fraction of the full decode (see imgq/storage/heif_tiles.py): its thumbnail is then not to be
    taken. ``max_tile_pixels``: the most a tile may hold, from the caller's memory budget. Close it after use."""
    return open_tiled(file, MIN_TILES, max_tile_pixels)


def shows_picture(thumbnail: Image.Image, picture: TiledPicture) -> bool:
    """Whether ``thumbnail`` (decoded, the whole picture scaled down, as shown) agrees with ``picture``: decodes
    the one tile where the thumbnail has the most structure. False when it has too little to tell."""
    grid = picture.grid
    grey = _grey(thumbnail)
    column, row, structure = most_structured(grey, grid)
    if structure < MIN_STRUCTURE:
        return False
    tile = picture.tile(column, row)
    return tile is not None and distance(tile_grey(tile, grid, column, row), grey, grid.box(column, row),
                                         grid.size) <= MAX_DISTANCE


def most_structured(thumbnail_grey: Image.Image, grid: Grid) -> tuple[int, int, float]:
    """(column, row, structure) of the tile whose part of the thumbnail (grey) varies most at COMPARE_SIDE a side,
    among the parts at least COMPARE_SIDE thumbnail pixels a side (fewer cannot tell pictures apart); structure 0
    when there is none. So at most (thumbnail width / COMPARE_SIDE) x (height / COMPARE_SIDE) parts are reduced,
    whatever number of tiles the file declares."""
    scale_x, scale_y = thumbnail_grey.width / grid.size[0], thumbnail_grey.height / grid.size[1]
    if min(grid.tile_size[0] * scale_x, grid.tile_size[1] * scale_y) < COMPARE_SIDE:
        return 0, 0, 0.0
    spreads = {}
    for row in range(grid.rows):
        for column in range(grid.columns):
            left, top, right, bottom = grid.box(column, row)
            if min((right - left) * scale_x, (bottom - top) * scale_y) >= COMPARE_SIDE:
                spreads[(column, row)] = float(part(thumbnail_grey, (left, top, right, bottom), grid.size).std())
    if not spreads:
        return 0, 0, 0.0
    column, row = max(spreads, key=lambda at: spreads[at])
    return column, row, spreads[(column, row)]


def tile_grey(tile: Image.Image, grid: Grid, column: int, row: int) -> np.ndarray:
    """What ``tile`` shows of the picture (its part in the grid's padding left out), COMPARE_SIDE a side, grey."""
    left, top, right, bottom = grid.box(column, row)
    corner_x, corner_y = grid.corner(column, row)
    shown = (left - corner_x, top - corner_y, right - corner_x, bottom - corner_y)
    return _reduced(_grey(tile), shown)


def distance(tile_grey_levels: np.ndarray, thumbnail_grey: Image.Image, box: tuple[int, int, int, int],
             picture_size: tuple[int, int]) -> float:
    """The mean absolute difference of a tile's grey levels and the thumbnail's part ``box`` of the picture, the
    least over SHIFTS of that part."""
    return min(float(np.abs(part(thumbnail_grey, box, picture_size, (dx, dy)) - tile_grey_levels).mean())
               for dx in SHIFTS for dy in SHIFTS)


def part(thumbnail_grey: Image.Image, box: tuple[int, int, int, int], picture_size: tuple[int, int],
         shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The thumbnail's part that shows ``box`` of a picture of ``picture_size``, moved by ``shift`` thumbnail
    pixels (kept within the thumbnail), COMPARE_SIDE a side."""
    scale_x, scale_y = thumbnail_grey.width / picture_size[0], thumbnail_grey.height / picture_size[1]
    left, top = box[0] * scale_x + shift[0], box[1] * scale_y + shift[1]
    right, bottom = box[2] * scale_x + shift[0], box[3] * scale_y + shift[1]
    return _reduced(thumbnail_grey, (max(left, 0.0), max(top, 0.0), min(right, thumbnail_grey.width),
                                     min(bottom, thumbnail_grey.height)))


def _grey(image: Image.Image) -> Image.Image:
    """Pillow's luma (ITU-R 601), alpha ignored: one byte a pixel."""
    return image if image.mode == "L" else image.convert("L")


def _reduced(grey: Image.Image, box: tuple[float, float, float, float]) -> np.ndarray:
    """``box`` of ``grey`` as COMPARE_SIDE x COMPARE_SIDE area averages."""
    reduced = grey.resize((COMPARE_SIDE, COMPARE_SIDE), Image.Resampling.BOX, box=box)
    return np.asarray(reduced, dtype=np.float32)
