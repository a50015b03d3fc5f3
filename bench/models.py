"""Every built-in model, bare and end to end, on both runtimes, in one run: what BENCHMARKS.md's "Models"
table shows.

    .venv/bin/python -m bench.models /work/shared/photos --limit 96 [--models resnet50,efficientnetv2b0]

Per model: the bare TensorFlow model (the worker's compiled forward pass on Keras' float input) and the bare
OpenVINO fp32 model (the same converted model a worker uses, uint8 pixels in, preprocessing in the graph), on
the same photos decoded once, batches of ``--batch-size``, forward passes only; then a real worker on each
runtime classifying the photos end to end (decode, queue, records), its start-up time beside it. Each figure
carries the share of the CPU other processes took while it was measured (bench/run.py ``measured``). The
weights are random (``random``): speed does not depend on them.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
import uuid

import click
import numpy as np

from bench import images, model, pipeline
from bench.run import machine, measured
from imgq.models.spec import BUILTIN, builtin_spec
from imgq.settings import Settings


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def pixel_batches(paths: list[str], batch_size: int, target) -> list[np.ndarray]:
    """The photos decoded as a worker decodes them for ``target``, in uint8 batches."""
    from worker.images.preprocess import load_pixels

    pixels = np.stack([load_pixels(p, target=target) for p in paths])
    return [pixels[i:i + batch_size] for i in range(0, len(pixels), batch_size)]


def bare(name: str, paths: list[str], batch_size: int, cache_dir: str) -> dict:
    """Bare TensorFlow and bare OpenVINO fp32 rates of ``name``, and the OpenVINO conversion's seconds."""
    from worker.images.preprocess import Target
    from worker.runtimes.keras_model import build_model
    from worker.runtimes.openvino_runtime import OpenVINOClassifier
    from worker.runtimes.tensorflow_runtime import Classifier

    spec = builtin_spec(name)
    batches = pixel_batches(paths, batch_size, Target.of(spec))
    keras_model, weights_id, spec = build_model(spec, "random")
    tensorflow = Classifier(keras_model, weights_id, batch_size, spec=spec)
    tensorflow.warm_up()
    result = {"tensorflow": measured(log, model.bare_rate, tensorflow, [tensorflow.model_input(list(b))
                                                                        for b in batches])}
    del tensorflow, keras_model
    gc.collect()
    started = time.perf_counter()
    openvino = OpenVINOClassifier("random", batch_size, "fp32", cache_dir, spec=name)
    openvino.warm_up()
    result["ov_conversion_seconds"] = round(time.perf_counter() - started, 1)
    result["openvino"] = measured(log, model.bare_rate, openvino, [openvino.model_input(list(b)) for b in batches])
    del openvino
    gc.collect()
    return result


def end_to_end(name: str, paths: list[str], settings: Settings) -> dict:
    result = {}
    for runtime in ("openvino", "tensorflow"):
        worker_settings = dataclasses.replace(settings, model=name, runtime=runtime)
        with pipeline.running_worker(worker_settings) as running:
            figures = measured(log, pipeline.end_to_end, running, paths, worker_settings)
            result[runtime] = {**figures, "startup_seconds": round(running.startup_seconds, 1),
                               "peak_rss_mb": running.peak_rss_mb()}
        log(f"{name} end to end on {runtime}: {figures['rate']:.1f} images/s")
    return result


def table(results: dict) -> str:
    """The BENCHMARKS.md table of a run."""
    lines = ["| model | top-1 (Keras) | bare TF | bare OV fp32 | imgq TF | imgq OV fp32 | imgq/bare OV | "
             "OV/TF end to end | worker start TF / OV (s) | others' CPU (bare TF, OV; e2e TF, OV) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results["models"].items():
        b, e = r["bare"], r["end_to_end"]
        others = [b["tensorflow"], b["openvino"], e["tensorflow"], e["openvino"]]
        share = ", ".join("?" if f.get("other_cpu") is None else f"{f['other_cpu']:.0%}" for f in others)
        lines.append(
            f"| {name} | {BUILTIN[name].top1}% | {b['tensorflow']['rate']:.1f} | {b['openvino']['rate']:.1f} | "
            f"{e['tensorflow']['rate']:.1f} | {e['openvino']['rate']:.1f} | "
            f"{e['openvino']['rate'] / b['openvino']['rate']:.2f}x | "
            f"{e['openvino']['rate'] / e['tensorflow']['rate']:.2f}x | "
            f"{e['tensorflow']['startup_seconds']} / {e['openvino']['startup_seconds']} | {share} |")
    return "\n".join(lines)


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--limit", type=click.IntRange(1), default=96, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--models", default=",".join(BUILTIN), show_default=True)
@click.option("--redis-url", default=None, help="A Redis to use (default: an embedded one).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON here.")
@click.option("--quiet-wait", type=click.FloatRange(0), default=20.0, show_default=True,
              help="Seconds to wait for a quiet machine before each figure (its share is reported either way).")
@click.option("--attempts", type=click.IntRange(1, 10), default=1, show_default=True)
def main(folder, limit, batch_size, models, redis_url, out, quiet_wait, attempts):
    from bench import run

    run.QUIET_WAIT, run.ATTEMPTS = quiet_wait, attempts
    names = [n.strip() for n in models.split(",") if n.strip()]
    unknown = [n for n in names if n not in BUILTIN]
    if unknown:
        raise click.BadParameter(f"unknown models {unknown}; built-ins: {', '.join(BUILTIN)}")
    paths = images.list_images(folder, limit)
    results = {"machine": machine(), "images": len(paths), "batch_size": batch_size, "models": {}}
    with tempfile.TemporaryDirectory(prefix="imgq-bench-models-") as tmp, \
            pipeline.redis_server(redis_url, tmp) as url:
        settings = Settings(broker_url=url, namespace=f"imgqbench-{uuid.uuid4().hex[:8]}", weights="random",
                            batch_size=batch_size, state_dir=tmp)
        for name in names:
            log(f"{name}: bare")
            bare_figures = bare(name, paths, batch_size, os.path.join(tmp, "openvino"))
            log(f"{name}: bare TF {bare_figures['tensorflow']['rate']:.1f}, "
                f"OV {bare_figures['openvino']['rate']:.1f} images/s")
            results["models"][name] = {"bare": bare_figures, "end_to_end": end_to_end(name, paths, settings)}
            if out:
                with open(out, "w") as file:
                    json.dump(results, file, indent=1)
    results["machine"]["load_average_after"] = os.getloadavg()
    print(table(results))
    if out:
        with open(out, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
