"""What the perceptual hash of `imgq duplicates` can carry, measured on a folder of photos, no weights needed:
each alteration's pHash distance from its original (the calibration's own copies: producer/alike/calibrate.py),
the distances between distinct photos (the empirical closest pairs against the normal fit the calibration
uses), the threshold it would choose, the time of one hash, and the bytes per image of a batch file.

    .venv/bin/python -m bench.alike /work/shared/photos [--target 0.001]
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import click
import numpy as np


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--target", type=float, default=0.001)
def main(folder: str, target: float) -> None:
    from imgq.alike.batchfile import BatchVectors, normalised, write_batch
    from imgq.alike.pairs import hash_histogram
    from imgq.settings import Settings
    from producer.alike.calibrate import bulk, choose_threshold, false_match_rate, measure_copies, upright, worker_hash

    paths = sorted(os.path.join(folder, name) for name in os.listdir(folder))
    settings = Settings.from_env()
    started = time.perf_counter()
    copies, unreadable = measure_copies(paths, settings)
    copies_s = time.perf_counter() - started
    images = [upright(p, settings) for p in paths]
    started = time.perf_counter()
    hashes = np.array([worker_hash(image) for image in images if image is not None], dtype=np.uint64)
    hash_ms = (time.perf_counter() - started) * 1000 / len(hashes)
    distinct = hash_histogram(hashes)
    centre, spread = bulk(distinct)
    threshold, rate = choose_threshold(distinct, copies, target)
    cumulative = np.cumsum(distinct)
    rows = 32
    vectors = BatchVectors(image=np.arange(rows, dtype=np.int64),
                           path=np.array([p.encode() for p in paths[:rows]], dtype=np.bytes_),
                           embedding=normalised(np.random.default_rng(0).normal(size=(rows, 2048))),
                           phash=hashes[:rows], content=np.zeros((rows, 16), np.uint8), model="resnet50",
                           weights="random:0")
    with tempfile.TemporaryDirectory() as root:
        written = write_batch(root, "bench", 0, vectors)
    print(json.dumps({
        "photos": len(paths), "unreadable": unreadable, "pairs": int(distinct.sum()),
        "copies": {kind: {"mean": round(float(np.mean(v)), 2), "p95": float(np.percentile(v, 95)), "max": max(v)}
                   for kind, v in copies.items()},
        "distinct": {"closest": int(np.nonzero(distinct)[0][0]), "centre": centre, "spread": round(spread, 2),
                     "at_most": {t: {"pairs": int(cumulative[t]), "rate": float(cumulative[t] / distinct.sum()),
                                     "fit": false_match_rate(t, centre, spread)} for t in range(10, 23, 2)}},
        "threshold": threshold, "fit_rate": rate, "empirical_rate": float(cumulative[threshold] / distinct.sum()),
        "copies_within": {kind: float(np.mean(np.array(v) <= threshold)) for kind, v in copies.items()},
        "phash_ms_per_image": round(hash_ms, 3), "copies_seconds": round(copies_s, 1),
        "batch_file_bytes_per_image": written["bytes"] / rows,
        "path_bytes": int(vectors.path.dtype.itemsize)}, indent=1))


if __name__ == "__main__":
    main()
