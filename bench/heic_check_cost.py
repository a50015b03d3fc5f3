"""What checking a HEIC's thumbnail against its picture costs the worker, side by side in every round.

    python -m bench.formats --phone 4 --cache DIR      # makes DIR/phone-4/photo_*.grid.heic (and measures)
    python -m bench.heic_check_cost DIR/phone-4 [--rounds 5]

On the 12 MP phone-like grid HEICs bench/formats.py makes (512 px tiles, a 320x240 thumbnail), from one thread
(libheif decodes a grid's tiles on threads of its own: a full decode uses every core):

- ``thumbnail_unchecked``: the thumbnail alone, as draft decoding took it before the check (pillow-heif's draft,
  then the worker's resize: what an unchecked thumbnail costs);
- ``thumbnail_checked``: the worker's load_pixels with draft decoding (the tile, the thumbnail, the check);
- ``full_decode``: load_pixels without draft;
- ``one_tile``: one tile of the picture decoded alone (imgq/storage/heif_tiles.py);
- ``edited_checked_then_full``: load_pixels with draft of a HEIC whose thumbnail is another photo's (made here,
  tests/photogen.py): the check refuses it and the picture is decoded whole.

Prints milliseconds per image (median of the rounds) with the share of the CPU other processes took, the CPU's
name and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from PIL import Image, ImageOps

from bench.formats import machine
from bench.interference import watch


def edited_twins(folder: Path) -> list[str]:
    """Photos 0 and 1, each with the other's thumbnail (kept in ``folder`` for the next run)."""
    from tests import photogen

    made = []
    for index in (0, 1):
        out = folder / f"edited_{index}.heic"
        if not out.exists():
            pictures = []
            for source in (index, 1 - index):
                with Image.open(folder / f"photo_{source:03d}.jpg") as image:
                    pictures.append(ImageOps.exif_transpose(image).convert("RGB"))
            picture, other = pictures
            photogen.heic_with_thumbnail_of(picture, other.resize(picture.size), out)
        made.append(str(out))
    return made


def cases(grids: list[str], edited: list[str]) -> dict:
    from imgq.storage.heif_thumbnails import tiled_picture
    from worker.images import preprocess

    def unchecked(path: str) -> None:
        with Image.open(path, formats=("HEIF",)) as image:
            assert image.draft(image.mode, (224, 224)) is not None
            preprocess._to_pixels(image, 89_478_485, preprocess.RESNET50, 1)

    def one_tile(path: str) -> None:
        with open(path, "rb") as file, tiled_picture(file, 1 << 20) as picture:
            assert picture.tile(picture.grid.columns // 2, picture.grid.rows // 2) is not None

    return {"thumbnail_unchecked": (grids, unchecked),
            "thumbnail_checked": (grids, lambda path: preprocess.load_pixels(path, jpeg_draft=True)),
            "full_decode": (grids, lambda path: preprocess.load_pixels(path, jpeg_draft=False)),
            "one_tile": (grids, one_tile),
            "edited_checked_then_full": (edited, lambda path: preprocess.load_pixels(path, jpeg_draft=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="bench/formats.py's phone folder (photo_*.jpg, photo_*.grid.heic)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    grids = sorted(str(path) for path in args.folder.glob("photo_*.grid.heic"))
    measured = cases(grids, edited_twins(args.folder))
    for paths, run in measured.values():  # the page cache and the decoders' first-use costs
        run(paths[0])
    report: dict = {"machine_before": machine(), "images": {"grids": len(grids), "edited": 2}}
    times: dict[str, list[float]] = {}
    others = []
    for _ in range(args.rounds):
        with watch() as share:
            for name, (paths, run) in measured.items():
                started = time.perf_counter()
                for path in paths:
                    run(path)
                times.setdefault(name, []).append((time.perf_counter() - started) * 1000 / len(paths))
        others.append(share.others)
    report["ms_per_image"] = {name: round(statistics.median(values), 1) for name, values in times.items()}
    report["ms_rounds"] = {name: [round(value, 1) for value in values] for name, values in times.items()}
    report["others_cpu"] = [round(other, 2) for other in others if other is not None]
    report["loadavg_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
