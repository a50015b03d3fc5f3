"""Thresholds calibrated on the user's own photos: altered copies of a sample of the job's photos, made in
memory, against the distances between distinct photos of the job.

Each sampled photo is opened by the worker's rules (allowed roots, a size cap, a pixel cap, never a blocking
open), turned upright by its EXIF orientation, and altered: JPEG re-encodes at qualities 40, 60 and 85, a
resize to 60%, a crop of 8% of each side's length (4% off each edge) and a brightness change of +8%. The
perceptual hash (imgq.alike.phash) of each copy, taken as the worker takes it (the picture squashed to the
model's input size first), is compared with the original's. The distinct pairs are every pair of the job's
rows whose content hashes differ; their false-match rate at a distance is the lower tail of real photos'
distances (measured once, REFERENCE_TAIL) moved and scaled to the job's bulk (median, MAD), which the job's own
duplicates (a few pairs near 0) do not move, where a plain count would call them false matches. The threshold
is the largest distance whose rate stays at most the target, and no larger than the farthest copy.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from imgq.alike.pairs import hash_histogram
from imgq.alike.phash import phash, popcount

MAX_THRESHOLD = 24  # bits: beyond this, a pHash match says little whatever a small job's pairs show
INPUT_SIZE = (224, 224)


class ReadLimits(Protocol):
    """What may be read of a photo here: Settings (IMGQ_ALLOWED_ROOTS, IMGQ_MAX_FILE_BYTES, IMGQ_MAX_PIXELS), or
    the report's PreviewLimits, which carry the same three."""

    @property
    def allowed_roots(self) -> tuple[str, ...]: ...

    @property
    def max_file_bytes(self) -> int: ...

    @property
    def max_pixels(self) -> int: ...


def _reencode(quality: int) -> Callable:
    def alter(image):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        buffer.seek(0)
        from PIL import Image

        return Image.open(buffer).convert("RGB")
    return alter


def _resize(image):
    return image.resize((max(1, round(image.width * 0.6)), max(1, round(image.height * 0.6))))


def _crop(image):
    dx, dy = round(image.width * 0.04), round(image.height * 0.04)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def _brighter(image):
    from PIL import ImageEnhance

    return ImageEnhance.Brightness(image).enhance(1.08)


ALTERATIONS: dict[str, Callable] = {"jpeg q40": _reencode(40), "jpeg q60": _reencode(60), "jpeg q85": _reencode(85),
                                    "resize 60%": _resize, "crop 8%": _crop, "brightness +8%": _brighter}


@dataclass
class Calibration:
    """What was measured: each alteration's distances from its original, the distinct pairs' histogram
    (pairs at each distance 0..64), the threshold chosen and its false-match rate."""

    copies: dict[str, list[int]] = field(default_factory=dict)
    distinct: np.ndarray = field(default_factory=lambda: np.zeros(65, dtype=np.int64))
    sampled: int = 0
    unreadable: int = 0
    threshold: int = 0
    false_match_rate: float = 0.0
    target: float = 0.0

    def recall(self, kind: str | None = None) -> float:
        """The share of copies (of one alteration, or all) within the threshold."""
        values = self.copies.get(kind, []) if kind else [d for ds in self.copies.values() for d in ds]
        return sum(d <= self.threshold for d in values) / len(values) if values else float("nan")

    def lines(self) -> list[str]:
        """What was measured, in words, for the user."""
        pairs = int(self.distinct.sum())
        centre, spread = bulk(self.distinct)
        close = int(self.distinct[:max(self.threshold, 0) + 1].sum())
        out = [f"Calibrated on altered copies of {self.sampled} of the jobs' photos ({self.unreadable} unreadable "
               f"here) and {pairs} pairs of photos of different content (pHash distance {centre:.0f} +- "
               f"{spread:.1f} bits): same picture at a distance of at most {self.threshold} bits, false-match "
               f"rate {self.false_match_rate:.3%} (target {self.target:.3%}); {close} pairs of the jobs are that "
               f"close, their own duplicates among them."]
        for kind, values in self.copies.items():
            if values:
                out.append(f"  {kind}: mean {np.mean(values):.1f} bits, 95th percentile "
                           f"{np.percentile(values, 95):.0f}, within the threshold {self.recall(kind):.0%}")
        return out


def upright(path: str, settings: ReadLimits):
    """The photo at ``path`` opened by the worker's rules, upright, RGB; None when it cannot be read here."""
    from PIL import Image, ImageOps

    from imgq.storage.errors import ImageError, ListingError, SourceUnavailable
    from imgq.storage.locate import source_for

    Image.MAX_IMAGE_PIXELS = settings.max_pixels
    try:
        with source_for(path).open(path, settings.allowed_roots, settings.max_file_bytes) as file:
            image = Image.open(file)
            image.draft("RGB", (1024, 1024))
            return ImageOps.exif_transpose(image).convert("RGB")
    except (ImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError, EOFError, ListingError,
            SourceUnavailable):  # ListingError: an s3:// photo on a producer without boto3
        return None


def worker_hash(image) -> int:
    """The pHash of ``image`` as the worker takes it: squashed to the model's input size first."""
    from PIL import Image

    return phash(np.asarray(image.resize(INPUT_SIZE, Image.Resampling.NEAREST)))


def measure_copies(paths: list[str], settings: ReadLimits) -> tuple[dict[str, list[int]], int]:
    """Each alteration's distances from its original over ``paths``; and how many could not be read."""
    copies: dict[str, list[int]] = {kind: [] for kind in ALTERATIONS}
    unreadable = 0
    for path in paths:
        image = upright(path, settings)
        if image is None:
            unreadable += 1
            continue
        original = np.uint64(worker_hash(image))
        for kind, alter in ALTERATIONS.items():
            copy = np.uint64(worker_hash(alter(image)))
            copies[kind].append(int(popcount(np.array([original ^ copy], dtype=np.uint64))[0]))
    return copies, unreadable


def bulk(distinct: np.ndarray) -> tuple[float, float]:
    """The centre and spread of the distinct pairs' distances (a histogram over 0..64), by their median and
    median absolute deviation (x 1.4826): robust to the job's own duplicates, a few pairs near 0 among the
    n^2/2, which a mean and a plain rate would count as false matches. pHashes of 32 bits set each (the
    median split) are an even number of bits apart, so the spread moves in steps of 2.97."""
    values = np.repeat(np.arange(65), distinct)
    if not len(values):
        return 32.0, 8.0  # uniform random bits: mean 32, standard deviation 4; wider, for want of pairs
    centre = float(np.median(values))
    return centre, 1.4826 * float(np.median(np.abs(values - centre)))


# The lower tail of distinct photos' pHash distances, standardised ((distance - median) / spread, ``bulk``):
# (z, log10 of the share of pairs at most that far), measured on the 31,125 pairs of the 250 photos of
# ../shared/photos (bench/alike.py; median 32 bits, spread 2.97). Real photos' tail is far heavier than a
# normal law's (at 16 bits: 9.6e-5 of pairs, where a normal law of the same median and spread says 9e-8).
REFERENCE_TAIL = ((-5.396, -4.016), (-4.721, -2.975), (-4.047, -2.268), (-3.372, -1.696), (-2.698, -1.241),
                  (-2.023, -0.862), (-1.349, -0.559), (-0.674, -0.340), (0.0, -0.187))


def false_match_rate(t: int, centre: float, spread: float) -> float:
    """The share of distinct pairs at most ``t`` bits apart in a job whose distinct pairs have this ``centre``
    and ``spread`` (``bulk``): the reference tail of real photos (REFERENCE_TAIL), moved and scaled to the job,
    interpolated log-linearly and extended below its last point along its last slope (at the median and
    beyond: 0.65, more than any target)."""
    if spread <= 0:
        return 1.0 if t >= centre else 0.0
    z = (t - centre) / spread
    zs = [point[0] for point in REFERENCE_TAIL]
    logs = [point[1] for point in REFERENCE_TAIL]
    if z < zs[0]:
        slope = (logs[1] - logs[0]) / (zs[1] - zs[0])
        return float(10 ** (logs[0] + slope * (z - zs[0])))
    return float(10 ** np.interp(z, zs, logs))


def choose_threshold(distinct: np.ndarray, copies: dict[str, list[int]], target: float) -> tuple[int, float]:
    """The largest distance t (at most MAX_THRESHOLD and the farthest copy) whose false-match rate (the share
    of distinct pairs at most t apart, from their bulk: ``bulk``) is at most ``target``; and that rate. -1
    when even 0 is over the target."""
    centre, spread = bulk(distinct)
    farthest = max((d for ds in copies.values() for d in ds), default=MAX_THRESHOLD)
    chosen, rate = -1, 0.0
    for t in range(min(MAX_THRESHOLD, farthest) + 1):
        estimate = false_match_rate(t, centre, spread)
        if estimate > target:
            break
        chosen, rate = t, estimate
    return chosen, rate


def calibrate(paths: list[str], hashes: np.ndarray, content: np.ndarray, settings: ReadLimits, target: float,
              sample: int, seed: int = 0) -> Calibration:
    """Measure copies of ``sample`` of ``paths`` (evenly drawn with ``seed``) and the distinct pairs of
    ``hashes`` (rows of equal ``content`` hashes left out); choose the threshold for ``target``."""
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(paths), size=min(sample, len(paths)), replace=False).tolist()) if paths else []
    copies, unreadable = measure_copies([paths[i] for i in chosen], settings)
    keys = np.array([bytes(c) for c in content], dtype=object)
    distinct = hash_histogram(hashes, keys)
    threshold, rate = choose_threshold(distinct, copies, target)
    return Calibration(copies, distinct, len(chosen) - unreadable, unreadable, threshold, rate, target)
