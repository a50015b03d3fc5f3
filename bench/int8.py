"""INT8 against fp32, on the same photos in one run: bare and end to end, with the agreement measured.

    .venv/bin/python -m bench.int8 ../shared/photos [--models resnet50] [--out int8.json]

Per model:
- the weights: image-dependent (tests/weights.py): the model's random convolutions, its classifier fitted so
  that each of ``--fit`` pictures (the photos, then generated pictures up to that count) has its own top-1
  class; a picture the random network cannot tell from another is left out (logged). Random weights label
  almost every photo alike and would show agreement that means nothing;
- the agreement: INT8 quantized on mirror images of the first ``--calibration`` photos (as IMGQ_CALIBRATION
  would on a folder of them), its top-1 and top-5 against fp32 on every fitted picture, none of which it saw;
- bare: the fp32 and INT8 OpenVINO models alone on the photos decoded once (forward passes only), in one run;
- end to end: a real fp32 worker and a real INT8 worker (IMGQ_CALIBRATION=the photos' folder) classifying the
  photos (decode, queue, records), start-up beside each.
Each figure carries the share of the CPU other processes took while it was measured (bench/run.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import click
import numpy as np

from bench import images, model, pipeline
from bench.run import machine, measured
from imgq.models.spec import BUILTIN, builtin_spec
from imgq.settings import Settings


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def fitted_weights(name: str, paths: list[str], fit: int, tmp: str) -> tuple[str, list[Path]]:
    """Image-dependent weights of ``name`` for the photos plus generated pictures up to ``fit`` of them."""
    from PIL import Image

    from tests import weights as test_weights

    pictures = [Path(p) for p in paths[:fit]]
    extra = Path(tmp) / "generated"
    extra.mkdir(exist_ok=True)
    for i in range(fit - len(pictures)):
        path = extra / f"generated-{i:04d}.png"
        Image.fromarray(test_weights.picture(10_000 + i)).save(path)
        pictures.append(path)
    out = Path(tmp) / f"{name}.weights.h5"
    _, told_apart = test_weights.told_apart_weights(pictures, out, model_name=name)
    if dropped := len(pictures) - len(told_apart):
        log(f"{name}: {dropped} of {len(pictures)} pictures left out: the random network cannot tell them apart")
    return str(out), told_apart


def agreement_and_speed(name: str, weights: str, pictures: list[Path], paths: list[str], calibration: int,
                        batch_size: int, cache_dir: str, speed: bool = True) -> dict:
    """Quantize on the first ``calibration`` photos, then the agreement on the other pictures and the bare
    rates of fp32 and INT8 on ``paths``."""
    from worker.images.preprocess import Target, load_pixels
    from worker.runtimes.calibration import Calibration
    from worker.runtimes.int8 import Agreement, Int8Classifier
    from worker.runtimes.openvino_runtime import OpenVINOClassifier

    spec = builtin_spec(name)
    target = Target.of(spec)
    decoded = [load_pixels(str(p), target=target) for p in pictures]
    fp32 = OpenVINOClassifier(weights, batch_size, "fp32", cache_dir, spec=name)
    fp32.warm_up()
    # Calibrated on mirror images of the first photos: pictures of the same kind as the user's, none of them
    # among the fitted ones, so that the agreement is measured on every fitted picture (1000 by default).
    mirrored = [np.ascontiguousarray(pixels[:, ::-1]) for pixels in decoded[:calibration]]
    int8 = Int8Classifier(weights, batch_size, "fp32", cache_dir, spec=name, min_agreement=0.0,
                          calibration=Calibration.of(mirrored, f"the first {calibration} photos, mirrored"))
    int8.warm_up()
    fitted = np.stack(decoded)
    agreement = Agreement.measured(fp32.predict(fitted), int8.predict(fitted))
    log(f"{name}: quantized in {int8.quantize_seconds:.1f} s; {agreement} (not calibrated on)")
    figures = {"quantize_seconds": round(int8.quantize_seconds, 1), "agreement": dataclasses.asdict(agreement),
               "fitted_pictures": len(pictures), "calibration_photos": calibration}
    if not speed:
        return figures
    photos = np.stack([load_pixels(p, target=target, jpeg_draft=True) for p in paths])
    batches = [photos[i:i + batch_size] for i in range(0, len(photos), batch_size)]
    return {**figures, "bare_fp32": measured(log, model.bare_rate, fp32, batches),
            "bare_int8": measured(log, model.bare_rate, int8, batches)}


def end_to_end(name: str, paths: list[str], settings: Settings, calibration_folder: str) -> dict:
    result = {}
    for precision in ("fp32", "int8"):
        worker_settings = dataclasses.replace(settings, model=name, runtime="openvino", precision=precision,
                                              calibration=calibration_folder if precision == "int8" else "")
        with pipeline.running_worker(worker_settings) as running:
            figures = measured(log, pipeline.end_to_end, running, paths, worker_settings)
            result[precision] = {**figures, "startup_seconds": round(running.startup_seconds, 1)}
        log(f"{name} end to end {precision}: {figures['rate']:.1f} images/s")
    return result


def table(results: dict) -> str:
    lines = ["| model | bare fp32 | bare int8 | int8/fp32 bare | imgq fp32 | imgq int8 | int8/fp32 imgq | "
             "imgq int8 / bare int8 | top-1 agreement | top-5 overlap | quantize (s) | others' CPU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results["models"].items():
        b32, b8, e32, e8 = r["bare_fp32"], r["bare_int8"], r["end_to_end"]["fp32"], r["end_to_end"]["int8"]
        share = ", ".join("?" if f.get("other_cpu") is None else f"{f['other_cpu']:.0%}" for f in (b32, b8, e32, e8))
        a = r["agreement"]
        lines.append(f"| {name} | {b32['rate']:.1f} | {b8['rate']:.1f} | {b8['rate'] / b32['rate']:.2f}x | "
                     f"{e32['rate']:.1f} | {e8['rate']:.1f} | {e8['rate'] / e32['rate']:.2f}x | "
                     f"{e8['rate'] / b8['rate']:.2f}x | {a['top1']:.3f} of {a['photos']} | {a['top5_overlap']:.3f} | "
                     f"{r['quantize_seconds']} | {share} |")
    return "\n".join(lines)


def agreement_table(results: dict) -> str:
    lines = ["| model | top-1 agreement | top-5 overlap | quantize (s) |", "| --- | --- | --- | --- |"]
    for name, r in results["models"].items():
        a = r["agreement"]
        lines.append(f"| {name} | {a['top1']:.3f} of {a['photos']} | {a['top5_overlap']:.3f} | "
                     f"{r['quantize_seconds']} |")
    return "\n".join(lines)


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--limit", type=click.IntRange(1), default=250, show_default=True, help="Photos classified.")
@click.option("--fit", type=click.IntRange(8, 1000), default=1000, show_default=True,
              help="Pictures the weights tell apart (the photos, then generated ones).")
@click.option("--calibration", type=click.IntRange(8, 1000), default=200, show_default=True,
              help="Photos INT8 is calibrated on (the first ones of the folder, mirrored).")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--models", default="resnet50", show_default=True)
@click.option("--redis-url", default=None, help="A Redis to use (default: an embedded one).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON here.")
@click.option("--quiet-wait", type=click.FloatRange(0), default=20.0, show_default=True)
@click.option("--speed/--agreement-only", default=True, show_default=True,
              help="--agreement-only: the agreement and the time to quantize, no rates (a busy machine).")
def main(folder, limit, fit, calibration, batch_size, models, redis_url, out, quiet_wait, speed):
    from bench import run

    run.QUIET_WAIT = quiet_wait
    names = [n.strip() for n in models.split(",") if n.strip()]
    if unknown := [n for n in names if n not in BUILTIN]:
        raise click.BadParameter(f"unknown models {unknown}; built-ins: {', '.join(BUILTIN)}")
    paths = images.list_images(folder, limit)
    results = {"machine": machine(), "images": len(paths), "batch_size": batch_size, "models": {}}
    with tempfile.TemporaryDirectory(prefix="imgq-bench-int8-") as tmp, pipeline.redis_server(redis_url, tmp) as url:
        for name in names:
            weights, pictures = fitted_weights(name, paths, fit, tmp)
            figures = agreement_and_speed(name, weights, pictures, paths, calibration, batch_size,
                                          os.path.join(tmp, "openvino"), speed)
            if speed:
                settings = Settings(broker_url=url, namespace=f"imgqbench-{uuid.uuid4().hex[:8]}", weights=weights,
                                    batch_size=batch_size, state_dir=tmp, calibration_images=calibration)
                figures["end_to_end"] = end_to_end(name, paths, settings, folder)
            results["models"][name] = figures
            if out:  # each model's figures kept as soon as they are made: a long run may be stopped
                Path(out).write_text(json.dumps(results, indent=1))
    results["machine"]["load_average_after"] = os.getloadavg()
    print(table(results) if speed else agreement_table(results))
    if out:
        Path(out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
