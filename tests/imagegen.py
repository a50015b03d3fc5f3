"""Test images made on the spot with Pillow: every format and mode imgq meets, and broken files."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def pattern(width: int = 300, height: int = 200, seed: int = 0) -> np.ndarray:
    """An RGB uint8 picture with structure (gradients and blocks), different for each seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                      ((x // 17 + y // 13) % 2) * 200], axis=-1)
    image = (image + rng.integers(0, 40, size=(1, 1, 3))) % 256
    return image.astype(np.uint8)


def scene(width: int = 320, height: int = 240, seed: int = 0, blobs: int = 12) -> np.ndarray:
    """An RGB uint8 picture of soft coloured blobs, as unlike another seed's as two photos are: its coarse
    light and shade (what a perceptual hash sees) is drawn at random, not only its colours."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    image = np.zeros((height, width, 3))
    for _ in range(blobs):
        cy, cx, radius = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius ** 2))
        image += weight[..., None] * rng.uniform(-1, 1, size=3)
    image -= image.min()
    return (255 * image / max(image.max(), 1e-9)).astype(np.uint8)


def save(path: Path, mode: str = "RGB", fmt: str | None = None, size=(300, 200), seed: int = 0, **params) -> Path:
    """Write a pattern image converted to ``mode`` at ``path`` (format from the suffix unless ``fmt``)."""
    image = Image.fromarray(pattern(*size, seed=seed), "RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt, **params)
    return path


def write_formats(folder: Path, seed: int = 0) -> list[Path]:
    """One valid image per common format and mode."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = [
        ("rgb.jpg", "RGB", {"quality": 90}), ("gray.jpg", "L", {}), ("cmyk.jpg", "CMYK", {}),
        ("rgb.png", "RGB", {}), ("rgba.png", "RGBA", {}), ("la.png", "LA", {}), ("palette.png", "P", {}),
        ("gray.png", "L", {}), ("rgb.bmp", "RGB", {}), ("rgb.gif", "P", {}), ("rgb.tif", "RGB", {}),
        ("lossless.webp", "RGB", {"lossless": True}), ("lossy.webp", "RGB", {"quality": 80}),
    ]
    return [save(folder / name, mode, seed=seed, **params) for name, mode, params in cases]


def truncated_jpeg(path: Path, seed: int = 0) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(pattern(seed=seed)).save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A small PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("L", (width, height // 1000)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[20:24] = height.to_bytes(4, "big")  # the IHDR chunk's height field...
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # ...and its checksum
    path.write_bytes(bytes(data))
    return path


def write_broken(folder: Path) -> dict[Path, str]:
    """Broken inputs and the error code each must produce."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "random.jpg").write_bytes(np.random.default_rng(1).bytes(4096))
    (folder / "notes.png").write_text("this is text, not a picture\n")
    return {
        folder / "empty.jpg": "not_an_image",
        folder / "random.jpg": "not_an_image",
        folder / "notes.png": "not_an_image",
        truncated_jpeg(folder / "truncated.jpg"): "corrupt",
        folder / "missing.jpg": "missing",
    }
