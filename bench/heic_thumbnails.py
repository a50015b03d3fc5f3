"""How far a HEIC's true thumbnail is from its picture, and another picture's: the bounds of
imgq/storage/heif_thumbnails.py, measured with its own functions.

    python -m bench.heic_thumbnails [--photos /work/shared/photos] [--count 250] [--real 4]

For each photo, a 12 MP phone-like picture (bench/phone.py: 4032x3024, sensor-like grain) and the same photo
repeated at its own resolution over 4032x3024 ("detail": a real photo's fine detail, which nearest-neighbour
thumbnails alias; no upscaling), both seen as phones store them, in 512 px tiles, with 320x240 thumbnails:
libheif's (nearest neighbour, what heif-enc and pillow-heif write) and a smooth one (Lanczos, as a camera app's
scaler). Thumbnails and the tile checked are HEVC-coded and decoded back by pillow-heif (x265's ultrafast preset,
quality 90, as bench/formats.py and the tests code them: more artefacts than a phone's encoder).

- true: each thumbnail against its own picture, as imgq checks it (the tile where the thumbnail has the most
  structure, HEVC-coded, against that part of the thumbnail);
- wrong: each photo's thumbnail against every other photo of the set (the other's tile at the place the
  thumbnail chose; uncoded, HEVC moves an 8x8 average by about a grey level).

``--real`` photos are also saved as real grid HEICs and read back through imgq's own path (libheif's tile decode),
to check that the simulation gives the same distances. Prints JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile

import numpy as np
from PIL import Image, ImageOps

from bench.phone import PHONE_SIZE, _with_grain
from imgq.storage import heif_thumbnails as check
from imgq.storage.heif_tiles import Grid
from imgq.storage.selection import PathFilter
from imgq.storage.walk import iter_images

TILE = 512
THUMB = (320, 240)
GRID = Grid(-(-PHONE_SIZE[0] // TILE), -(-PHONE_SIZE[1] // TILE), (TILE, TILE), PHONE_SIZE)


def heif_round_trip(image: Image.Image) -> Image.Image:
    """``image`` coded as HEVC by pillow-heif (as a grid tile or a thumbnail is) and decoded back."""
    buffer = io.BytesIO()
    image.save(buffer, format="HEIF", quality=90, enc_params={"preset": "ultrafast"})
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def libheif_thumbnail(picture: Image.Image) -> Image.Image:
    """libheif's thumbnail scaling (HeifPixelImage::scale_nearest_neighbor): source pixel x * W // w."""
    pixels = np.asarray(picture)
    height, width = pixels.shape[:2]
    rows = np.arange(THUMB[1]) * height // THUMB[1]
    columns = np.arange(THUMB[0]) * width // THUMB[0]
    return Image.fromarray(np.ascontiguousarray(pixels[rows][:, columns]))


def tile_of(picture: Image.Image, column: int, row: int) -> Image.Image:
    """Tile (column, row) as the grid stores it: 512x512 from its corner (Pillow pads past the picture's edge)."""
    left, top = GRID.corner(column, row)
    return picture.crop((left, top, left + TILE, top + TILE))


def phone_like(source: str, index: int) -> Image.Image:
    with Image.open(source) as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
    return _with_grain(ImageOps.fit(upright, PHONE_SIZE, Image.Resampling.BICUBIC), seed=index)


def mosaic(source: str) -> Image.Image:
    """The photo repeated at its own resolution over 4032x3024: a 12 MP picture with a photo's fine detail."""
    with Image.open(source) as image:
        pixels = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    reps = (-(-PHONE_SIZE[1] // pixels.shape[0]), -(-PHONE_SIZE[0] // pixels.shape[1]), 1)
    return Image.fromarray(np.ascontiguousarray(np.tile(pixels, reps)[: PHONE_SIZE[1], : PHONE_SIZE[0]]))


def measure_one(picture: Image.Image) -> dict:
    """Every tile's grey levels (for the wrong pairs) and, per thumbnail kind, the thumbnail's grey image, the
    tile it chooses, its structure there and the true distance."""
    found: dict = {"tiles": {(column, row): check.tile_grey(tile_of(picture, column, row), GRID, column, row)
                             for row in range(GRID.rows) for column in range(GRID.columns)}}
    for kind, thumb in (("nearest", libheif_thumbnail(picture)),
                        ("smooth", picture.resize(THUMB, Image.Resampling.LANCZOS))):
        grey = heif_round_trip(thumb).convert("L")
        column, row, structure = check.most_structured(grey, GRID)
        coded = check.tile_grey(heif_round_trip(tile_of(picture, column, row)), GRID, column, row)
        found[kind] = {"grey": grey, "at": (column, row), "structure": structure,
                       "true": check.distance(coded, grey, GRID.box(column, row), GRID.size)}
    return found


def wrong_distances(measured: list[dict], kind: str) -> list[float]:
    """Each photo's thumbnail against every other photo's tile at the place the thumbnail chose."""
    found = []
    for j, other in enumerate(measured):
        thumb = other[kind]
        box = GRID.box(*thumb["at"])
        found += [check.distance(one["tiles"][thumb["at"]], thumb["grey"], box, GRID.size)
                  for i, one in enumerate(measured) if i != j]
    return found


def real_check(sources: list[str], folder: str) -> list[dict]:
    """Real grid HEICs (pillow-heif: 512 px tiles, a 320 px thumbnail) through imgq's path, beside the simulation."""
    found = []
    for index, source in enumerate(sources):
        picture = phone_like(source, index)
        path = os.path.join(folder, f"real_{index}.heic")
        picture.save(path, format="HEIF", quality=90, tile_size=TILE, thumbnails=[THUMB[0]],
                     enc_params={"preset": "ultrafast"})
        with open(path, "rb") as file, check.tiled_picture(file, 1 << 20) as tiled, Image.open(path) as image:
            image.draft("RGB", (224, 224))
            grey = image.convert("L")
            column, row, _ = check.most_structured(grey, tiled.grid)
            tile = check.tile_grey(tiled.tile(column, row), tiled.grid, column, row)
            real = check.distance(tile, grey, tiled.grid.box(column, row), tiled.grid.size)
        found.append({"real": round(real, 3), "simulated": round(measure_one(picture)["nearest"]["true"], 3)})
    return found


def summary(values: list[float], counted: str, bound: float) -> dict:
    """Spread of ``values``, and how many are ``counted``: "accepted" (at most ``bound``), "over" or "below" it."""
    data = np.array(values)
    count = {"accepted": data <= bound, "over": data > bound, "below": data < bound}[counted]
    return {"n": len(data), "min": round(float(data.min()), 2), "p1": round(float(np.percentile(data, 1)), 2),
            "p50": round(float(np.median(data)), 2), "p99": round(float(np.percentile(data, 99)), 2),
            "max": round(float(data.max()), 2), counted: int(count.sum())}


def main() -> None:
    import pillow_heif

    pillow_heif.register_heif_opener(thumbnails=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default="/work/shared/photos")
    parser.add_argument("--count", type=int, default=250)
    parser.add_argument("--real", type=int, default=4, help="photos also saved as real grid HEICs (8 s each)")
    args = parser.parse_args()
    sources = sorted(iter_images([args.photos], PathFilter()))[: args.count]
    measured: dict[str, list[dict]] = {"phone": [], "detail": []}
    for index, source in enumerate(sources):
        measured["phone"].append(measure_one(phone_like(source, index)))
        measured["detail"].append(measure_one(mosaic(source)))
        print(f"{index + 1}/{len(sources)}", file=sys.stderr, flush=True)
    report: dict = {"photos": len(sources), "max_distance": check.MAX_DISTANCE, "min_structure": check.MIN_STRUCTURE}
    for picture_kind, all_measured in measured.items():
        for kind in ("nearest", "smooth"):
            report[f"{picture_kind}_{kind}"] = {
                "true": summary([one[kind]["true"] for one in all_measured], "over", check.MAX_DISTANCE),
                "wrong": summary(wrong_distances(all_measured, kind), "accepted", check.MAX_DISTANCE),
                "structure": summary([one[kind]["structure"] for one in all_measured], "below", check.MIN_STRUCTURE)}
    with tempfile.TemporaryDirectory() as folder:
        report["real_grid_vs_simulated"] = real_check(sources[: args.real], folder)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
