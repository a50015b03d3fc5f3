"""Feature maps as pictures: a layer's most active channels for one image, as a grid of heat maps.

numpy and Pillow only. A channel's "activity" is its mean activation over the image; the grid shows the
channels with the highest means, most active first, left to right and top to bottom. Each tile is scaled on
its own (its minimum black, its maximum white-yellow), so a tile shows *where* its channel responds; how
strongly is in the tile's label (`imgq show`) or the image's title (`imgq report`).

A layer without spatial axes (``avg_pool``, ``predictions``: shape ``(C,)``) has nothing to map per channel:
it is drawn as one tile, its C values laid out in channel order on a near-square raster.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_ANCHORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                     [250, 193, 39], [252, 255, 164]], dtype=np.float64)
# Eight stops of the "inferno" colormap (black, purple, red, orange, pale yellow): dark is low, bright
# is high, and it stays readable in greyscale and for the common colour-blindnesses.

LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c])
                for c in range(3)], axis=-1).round().astype(np.uint8)
# The colormap as a 256-entry lookup table: colouring a map is then one indexing operation.

GAP = 2
BACKGROUND = (32, 32, 32)
LABEL_HEIGHT = 14


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB of shape ``(*values.shape, 3)``."""
    return LUT[np.clip(np.nan_to_num(values) * 255 + 0.5, 0, 255).astype(np.uint8)]


def normalize(tile: np.ndarray) -> np.ndarray:
    """``tile`` scaled to [0, 1] by its own minimum and maximum; a constant tile is all zeros."""
    tile = tile.astype(np.float32)
    low, high = float(tile.min()), float(tile.max())
    return (tile - low) / (high - low) if high > low else np.zeros_like(tile)


def most_active(activations: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` channels (last axis) of ``activations`` (H, W, C) with the highest mean,
    highest first; all of them when ``n`` is 0 or more than C."""
    means = activations.astype(np.float32).mean(axis=(0, 1))
    order = np.argsort(-means, kind="stable")
    return order if n <= 0 else order[:n]


def vector_raster(vector: np.ndarray) -> np.ndarray:
    """A 1-D activation laid out as a 2-D array, rows of channels in order (2048 -> 32 x 64).

    The most square exact factorisation when one is no wider than 4:1, else a square padded with NaN.
    """
    n = vector.size
    rows = next(d for d in range(math.isqrt(n), 0, -1) if n % d == 0)
    if n // rows <= 4 * rows:
        return vector.reshape(rows, n // rows)
    side = math.isqrt(n - 1) + 1
    padded = np.full(side * side, np.nan, dtype=np.float32)
    padded[:n] = vector
    return padded.reshape(side, side)


def tiles(activations: np.ndarray, channels: int) -> list[tuple[str, np.ndarray]]:
    """``(label, map)`` pairs to draw for one image's ``activations`` (no batch axis)."""
    if activations.ndim == 1:
        return [(f"{activations.size} values, mean {float(activations.astype(np.float32).mean()):.3g}",
                 vector_raster(activations.astype(np.float32)))]
    if activations.ndim != 3:
        raise ValueError(f"Expected activations of shape (H, W, C) or (C,). Received: {activations.shape}")
    chosen = most_active(activations, channels)
    means = activations.astype(np.float32).mean(axis=(0, 1))
    return [(f"ch {c} mean {means[c]:.3g}", activations[:, :, c]) for c in chosen]


def heat_tile(values: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """One map as a heat-map image of ``size`` (width, height), blown up without smoothing so that each
    activation stays one visible block (a 7x7 map is 49 blocks, not a blur)."""
    finite = np.isfinite(values)
    scaled = normalize(np.where(finite, values, np.nanmin(values) if finite.any() else 0))
    rgb = colorize(scaled)
    rgb[~finite] = BACKGROUND
    return Image.fromarray(rgb, "RGB").resize(size, Image.Resampling.NEAREST)


def tile_size(shape: tuple[int, int], cell: int) -> tuple[int, int]:
    """(width, height) of a tile whose longer side is ``cell`` pixels, keeping the map's aspect."""
    height, width = shape
    scale = cell / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def feature_grid(activations: np.ndarray, channels: int = 16, cell: int = 96, labels: bool = False,
                 columns: int | None = None) -> Image.Image:
    """A grid of heat maps of the ``channels`` most active channels (0: all) of one image's activations.

    ``cell``: the longer side of each tile in pixels. ``labels``: write each channel's number and mean
    under its tile. ``columns``: tiles per row at most (default: a near-square grid). Raises ValueError for
    activations that are neither (H, W, C) nor (C,).
    """
    chosen = tiles(activations, channels)
    columns = min(columns or math.isqrt(len(chosen) - 1) + 1, len(chosen))
    rows = math.ceil(len(chosen) / columns)
    width, height = tile_size(chosen[0][1].shape, cell)
    step_y = height + GAP + (LABEL_HEIGHT if labels else 0)
    grid = Image.new("RGB", (columns * (width + GAP) + GAP, rows * step_y + GAP), BACKGROUND)
    draw = ImageDraw.Draw(grid) if labels else None
    font = ImageFont.load_default(size=10) if labels else None
    for k, (label, values) in enumerate(chosen):
        x, y = GAP + (k % columns) * (width + GAP), GAP + (k // columns) * step_y
        grid.paste(heat_tile(values, (width, height)), (x, y))
        if draw is not None:
            draw.text((x + 1, y + height + 1), label, fill=(220, 220, 220), font=font)
    return grid


def channel_title(activations: np.ndarray, channels: int) -> str:
    """Which channels a grid of ``feature_grid(activations, channels)`` shows, for a caption or a title."""
    if activations.ndim == 1:
        return f"all {activations.size} values in channel order"
    chosen = most_active(activations, channels)
    return f"channels {', '.join(str(int(c)) for c in chosen)} of {activations.shape[-1]}, most active first"


def write_png(image: Image.Image, out: str) -> None:
    """Save ``image`` as a PNG at ``out``, through a temporary file renamed into place."""
    from imgq.storage.files import atomic_path

    with atomic_path(out) as tmp:
        image.save(tmp, format="PNG")
