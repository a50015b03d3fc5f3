"""What a HEIC or a camera RAW costs the worker to decode, beside the JPEG of the same photo, in one run.

    python -m bench.formats [--photos /work/shared/photos] [--count 32] [--phone 4] [--rounds 5]

Makes, in --cache (kept for the next run), a HEIC twin of each photo (libheif's heif-enc, quality 90; x265's
ultrafast preset for the 12 MP ones, or encoding them takes minutes: one coded image, without and with a 320 px
thumbnail), a grid twin as phones write it (pillow-heif: 512 px tiles, a 320 px thumbnail, which draft decoding
takes once it agrees with a tile: imgq/storage/heif_thumbnails.py) and a DNG twin whose embedded preview
is the photo's JPEG itself (tests/photogen.py), and the same for ``--phone`` 12 MP phone-like photos
(bench/phone.py). Then times the worker's ``load_pixels`` on one thread, JPEG, HEIC and DNG side by side
in every round (with ``jpeg_draft`` on, the worker's default, and off), and prints milliseconds per image with
the share of the CPU other processes took meanwhile, the CPU's name and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path

from bench.interference import watch
from bench.phone import write_phone_photo
from imgq.storage.selection import PathFilter
from imgq.storage.walk import iter_images


def make_twins(sources: list[str], folder: Path, phone: bool) -> dict[str, list[str]]:
    """``{"jpeg": [...], "heic": [...], "heic_thumb": [...], "heic_grid": [...], "dng": [...]}``: each source as a
    JPEG and its twins, the HEIC without and with an embedded 320x240 thumbnail, the grid one (files already in
    ``folder`` are kept: they are made the same way from the same sources)."""
    from tests import photogen

    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[str]] = {"jpeg": [], "heic": [], "heic_thumb": [], "heic_grid": [], "dng": []}
    for index, source in enumerate(sources):
        jpeg, heic, heic_thumb, heic_grid, dng = (folder / f"photo_{index:03d}.{ext}" for ext in (
            "jpg", "heic", "t320.heic", "grid.heic", "dng"))
        if not jpeg.exists():
            if phone:
                write_phone_photo(source, jpeg, index)
            else:
                jpeg.write_bytes(Path(source).read_bytes())
        if not heic.exists():
            partial_heic = heic.with_name(heic.name + ".partial.heic")
            photogen.heic_from(jpeg, partial_heic, 90, *(["preset=ultrafast"] if phone else []), timeout=1800)
            os.replace(partial_heic, heic)
        if not heic_thumb.exists():  # as phones write them: with a 320x240 thumbnail (heif-enc -t 320)
            partial_heic = heic_thumb.with_name(heic_thumb.name + ".partial.heic")
            from PIL import Image

            with Image.open(jpeg) as picture:  # heif-enc refuses a thumbnail not smaller than the image
                thumbnail = 320 if max(picture.size) > 320 else None
            photogen.heic_from(jpeg, partial_heic, 90, *(["preset=ultrafast"] if phone else []), timeout=1800,
                               thumbnail=thumbnail)
            os.replace(partial_heic, heic_thumb)
        if not heic_grid.exists():
            _grid_twin(jpeg, heic_grid)
        if not dng.exists():
            dng.write_bytes(photogen.dng(jpeg.read_bytes()))
        for kind, path in (("jpeg", jpeg), ("heic", heic), ("heic_thumb", heic_thumb), ("heic_grid", heic_grid),
                           ("dng", dng)):
            made[kind].append(str(path))
    return made


def _grid_twin(jpeg: Path, out: Path) -> None:
    """The photo upright (pillow-heif writes an EXIF orientation as the picture's ``irot`` but leaves its thumbnail
    unturned, which draft never takes; a phone turns both), as a grid of 512 px tiles with a 320 px thumbnail."""
    from PIL import Image, ImageOps

    from tests import photogen

    partial = out.with_name(out.name + ".partial.heic")
    with Image.open(jpeg) as picture:
        photogen.heic_grid(ImageOps.exif_transpose(picture).convert("RGB"), partial, thumbnail=320)
    os.replace(partial, out)


def ms_per_image(paths: list[str], decode) -> float:
    started = time.perf_counter()
    for path in paths:
        decode(path)
    return (time.perf_counter() - started) * 1000 / len(paths)


def measure(twins: dict[str, list[str]], rounds: int) -> dict:
    """Median milliseconds per image of each kind, draft on and off, the kinds interleaved in every round."""
    from worker.images.preprocess import load_pixels

    for paths in twins.values():  # the page cache and the decoders' first-use costs
        load_pixels(paths[0])
    times: dict[str, list[float]] = {}
    others = []
    for _ in range(rounds):
        with watch() as share:
            for draft in (True, False):
                for kind, paths in twins.items():
                    key = f"{kind}_{'draft' if draft else 'full'}_ms"
                    times.setdefault(key, []).append(ms_per_image(paths, partial(load_pixels, jpeg_draft=draft)))
        others.append(share.others)
    figures = {key: round(statistics.median(values), 2) for key, values in times.items()}
    figures["others_cpu_max"] = max((o for o in others if o is not None), default=None)
    figures["images_each"] = len(twins["jpeg"])
    figures["bytes_per_image"] = {kind: round(sum(os.path.getsize(p) for p in paths) / len(paths))
                                  for kind, paths in twins.items()}
    return figures


def machine() -> dict:
    with open("/proc/cpuinfo") as cpuinfo:
        lines = cpuinfo.read().splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
    versions = {}
    for module in ("pillow_heif", "rawpy", "PIL"):
        versions[module] = __import__(module).__version__
    heif_enc = subprocess.run(["heif-enc", "--help"], capture_output=True, text=True).stderr.splitlines()
    return {"cpu": name, "flags": [flag for flag in wanted if flag in flags], "cores": os.cpu_count(),
            "loadavg": os.getloadavg(), "versions": versions,
            "heif_enc": next((line.strip() for line in heif_enc if "libheif" in line), "?")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default="/work/shared/photos")
    parser.add_argument("--count", type=int, default=32, help="ImageNet-size photos taken from --photos")
    parser.add_argument("--phone", type=int, default=4, help="12 MP phone-like photos made from --photos")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "imgq-bench-formats"))
    args = parser.parse_args()
    sources = sorted(iter_images([args.photos], PathFilter()))
    small = make_twins(sources[:args.count], Path(args.cache) / f"small-{args.count}", phone=False)
    phone = make_twins(sources[:args.phone], Path(args.cache) / f"phone-{args.phone}", phone=True)
    report: dict = {"machine_before": machine(), "imagenet_size": measure(small, args.rounds)}
    if phone["jpeg"]:
        report["phone_12mp"] = measure(phone, args.rounds)
    report["loadavg_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
