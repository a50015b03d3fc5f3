"""The cost of activation dumps: the forward pass that also returns dumped layers against the same pass
without them, side by side in one process on pre-decoded batches; then the cost of writing the .npz files.

    .venv/bin/python -m bench.activations /work/shared/photos [--layers L1,L2,...] [--rounds 3]

Run it while no worker runs: on a 2-core machine they would compete for the cores. The machine's load
drifts anyway (other processes), so each batch is timed once per configuration in turn, alternating which
goes first, and the ratio of the summed times is reported together with the median of per-batch ratios.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import click
import numpy as np

WARM_UP_PASSES = 2  # tracing the graph and oneDNN's first calls: not steady-state time


def decoded_batches(folder: str, batch_size: int, limit: int | None) -> list[np.ndarray]:
    """The images under ``folder`` (sorted), decoded and preprocessed as the worker does, in float32 batches."""
    from imgq.storage.selection import PathFilter
    from imgq.storage.walk import iter_images
    from worker.images.preprocess import TARGET_SIZE, load_pixels, to_model_input

    paths = sorted(iter_images([folder], PathFilter()))[:limit]
    batches = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        batch = np.empty((len(chunk), *TARGET_SIZE, 3), dtype=np.float32)
        for row, path in zip(batch, chunk, strict=True):
            to_model_input(load_pixels(path, jpeg_draft=True), out=row)
        batches.append(batch)
    return batches


def time_passes(classifier, batches: list[np.ndarray], configs: dict[str, tuple[str, ...]], rounds: int) -> dict:
    """Seconds per batch of ``classifier.predict_with`` for each layer set, interleaved batch by batch."""
    for layers in configs.values():
        for _ in range(WARM_UP_PASSES):
            classifier.predict_with(batches[0], layers)
    seconds = {name: [] for name in configs}
    names = list(configs)
    for round_ in range(rounds):
        for k, batch in enumerate(batches):
            order = names if (round_ + k) % 2 == 0 else names[::-1]
            for name in order:
                started = time.perf_counter()
                classifier.predict_with(batch, configs[name])
                seconds[name].append(time.perf_counter() - started)
    return seconds


def ratios(seconds: dict[str, list[float]], base: str, images: int, batches: int) -> dict:
    """Per configuration: total seconds, images/s, and its cost relative to ``base`` three ways: the ratio of
    the summed times, the median of per-batch ratios, and the ratio of the sums of each batch's fastest pass
    over the rounds. The last is the least disturbed by other processes (they only ever add time), so it is
    the figure to quote on a busy machine."""
    summary = {}
    for name, times in seconds.items():
        summary[name] = {"seconds": round(sum(times), 2), "images_per_second": round(images / sum(times), 2),
                         "ratio_of_sums": round(sum(times) / sum(seconds[base]), 3),
                         "median_batch_ratio": round(statistics.median(
                             t / b for t, b in zip(times, seconds[base], strict=True)), 3),
                         "ratio_of_minima": round(_sum_of_minima(times, batches)
                                                  / _sum_of_minima(seconds[base], batches), 3)}
    return summary


def _sum_of_minima(times: list[float], batches: int) -> float:
    """``times`` holds rounds of ``batches`` timings: the sum over batches of each one's fastest round."""
    return sum(min(times[k::batches]) for k in range(batches))


def write_cost(classifier, batches: list[np.ndarray], layers: tuple[str, ...], dtype: str, folder: str) -> dict:
    """Milliseconds per image to write its .npz (worker.batches.dumps.write_dump: cast, temporary file, rename)."""
    from worker.batches.dumps import write_dump

    written, started, total_bytes = 0, 0.0, 0
    for batch in batches:
        _, activations = classifier.predict_with(batch, layers)
        begin = time.perf_counter()
        for row in range(len(batch)):
            entry = write_dump(folder, "bench", written, {n: v[row] for n, v in activations.items()}, dtype)
            total_bytes += entry["bytes"]
            written += 1
        started += time.perf_counter() - begin
    return {"dtype": dtype, "images": written, "ms_per_image": round(1000 * started / written, 2),
            "bytes_per_image": total_bytes // written, "megabytes_per_second": round(total_bytes / started / 1e6, 1)}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--layers", default="conv1_relu,conv3_block4_out,avg_pool", show_default=True,
              help="The dumped layers (comma-separated).")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True, help="Passes over the images.")
@click.option("--limit", type=click.IntRange(1), help="Use the first N images (sorted by path).")
@click.option("--dump-dir", type=click.Path(file_okay=False), help="Where the .npz files are written [a temp dir].")
def main(folder, layers, batch_size, rounds, limit, dump_dir):
    """Time the forward pass with and without dumped layers, and the writing of the dumps."""
    from imgq.models.layers import check_layers
    from worker.runtimes.loading import load_classifier

    chosen = check_layers(layers.split(","))
    batches = decoded_batches(folder, batch_size, limit)
    full = [b for b in batches if len(b) == batch_size] or batches  # a short last batch is not the steady state
    classifier = load_classifier("random", batch_size)
    configs = {"no dumps": (), "+".join(chosen): chosen}
    if chosen != ("avg_pool",) and "avg_pool" in chosen:
        configs["avg_pool"] = ("avg_pool",)
    images = sum(len(b) for b in full) * rounds
    result = {"images": images, "batch_size": batch_size, "cpus": os.cpu_count(),
              "load_average_before": os.getloadavg()[0],
              "forward_pass": ratios(time_passes(classifier, full, configs, rounds), "no dumps", images, len(full))}
    with tempfile.TemporaryDirectory(dir=dump_dir) as tmp:
        result["npz_write"] = [write_cost(classifier, full, chosen, dtype, tmp) for dtype in ("float16", "float32")]
    per_image = result["forward_pass"]["no dumps"]["seconds"] / images
    for cost in result["npz_write"]:  # the writes against the forward pass they follow
        cost["fraction_of_forward_pass"] = round(cost["ms_per_image"] / 1000 / per_image, 3)
    result["load_average_after"] = os.getloadavg()[0]
    click.echo(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
