"""Where an end-to-end run spends the worker's CPU: the model, decoding, and the pipeline around them.

    .venv/bin/python -m bench.cpu_shares ../shared/photos [--precision int8] [--rounds 4] [--out shares.json]

In one run, on the same photos and the same model (ResNet50 by default, random weights: the CPU a pass costs
does not depend on them):
- **the model alone**: the OpenVINO model imgq compiles (int8: quantized on the folder's first photos, as
  IMGQ_CALIBRATION would) runs every batch in this process; its CPU seconds (getrusage: every thread,
  OpenVINO's own included) are what the forward passes cost;
- **decoding alone**: the photos decoded in this process on one thread, its CPU seconds (the records' ``decode_ms``
  is wall time, stretched by the forward passes competing for the cores: kept as ``decode_wall_seconds``);
- **end to end**: a real worker of that precision classifies the photos ``--rounds`` times, one job each; its CPU
  seconds are read from /proc/PID/stat (every thread), the Redis server's and this process's (the producer) beside
  them, and the share of the machine other processes took (bench/interference.py);
- **the rest**, the pipeline (Celery, Redis round trips, records, gathering, threads), is the worker's CPU less
  the model's and decoding's. With py-spy installed (``pip install py-spy``; not a dependency of imgq), the
  worker's Python threads are sampled meanwhile and the rest is split by the module each sample is in.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import click
import numpy as np

from bench import images, interference, model, pipeline
from bench.run import machine
from imgq.settings import Settings

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Where a sample of a worker's Python thread is, by the first frame (from the innermost) whose file matches.
BUCKETS = (
    ("forward pass (waiting on OpenVINO)", ("openvino", "runtimes/openvino_runtime", "runtimes/int8")),
    ("decoding", ("PIL/", "worker/images/", "pillow_heif", "rawpy")),
    ("Redis client", ("redis/",)),
    ("Celery and kombu", ("celery/", "kombu/", "billiard/", "vine/", "amqp/")),
    ("records and JSON", ("imgq/contract", "imgq/results/", "json/")),
    ("gathering and batch code", ("worker/batches/", "worker/tasks", "worker/process")),
    ("threads and queues", ("threading.py", "queue.py", "concurrent/")),
)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def model_alone(paths: list[str], batch_size: int, precision: str, calibration: int, cache_dir: str) -> dict:
    """The CPU seconds and wall seconds of the forward passes alone over ``paths`` (every batch, the last
    short one too: the worker runs it as well)."""
    from imgq.models.spec import builtin_spec
    from worker.images.preprocess import Target, load_pixels
    from worker.runtimes.openvino_runtime import OpenVINOClassifier

    target = Target.of(builtin_spec("resnet50"))
    cpu = own_cpu_seconds()
    photos = np.stack([load_pixels(p, target=target, jpeg_draft=True) for p in paths])
    decode_cpu = own_cpu_seconds() - cpu  # one thread, nothing else running: decoding's own CPU
    if precision == "int8":
        from worker.runtimes.calibration import Calibration
        from worker.runtimes.int8 import Int8Classifier

        classifier = Int8Classifier("random", batch_size, "fp32", cache_dir, spec="resnet50", min_agreement=0.0,
                                    calibration=Calibration.of(list(photos[:calibration]), "the first photos"))
    else:
        classifier = OpenVINOClassifier("random", batch_size, precision, cache_dir, spec="resnet50")
    classifier.warm_up()
    batches = [photos[i:i + batch_size] for i in range(0, len(photos), batch_size)]
    for _ in range(model.WARM_UP_PASSES):
        classifier.predict(batches[0])
    cpu, wall = own_cpu_seconds(), time.perf_counter()
    for batch in batches:
        classifier.predict(batch)
    return {"images": len(photos), "cpu_seconds": own_cpu_seconds() - cpu, "seconds": time.perf_counter() - wall,
            "decode_cpu_seconds": decode_cpu}


@contextlib.contextmanager
def sampled(pid: int, out: Path):
    """py-spy sampling ``pid``'s Python threads meanwhile (raw collapsed stacks in ``out``), if it is installed."""
    spy = shutil.which("py-spy") or (str(Path(sys.executable).parent / "py-spy"))
    if not os.path.exists(spy):
        yield None
        return
    process = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "200", "--nonblocking", "--format",
                                "raw", "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches before the first job is submitted
    try:
        yield out
    finally:
        process.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
        process.wait(timeout=60)


def shares(raw: Path) -> dict[str, float]:
    """The share of the worker's on-CPU Python samples in each bucket (py-spy leaves idle threads out)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        bucket = next((name for frame in reversed(frames) for name, marks in BUCKETS
                       if any(mark in frame for mark in marks)), "other")
        counts[bucket] += int(count)
    total = sum(counts.values()) or 1
    return {name: round(n / total, 3) for name, n in counts.most_common()}


def end_to_end(paths: list[str], settings: Settings, rounds: int, tmp: str, redis_pid: int | None) -> dict:
    with pipeline.running_worker(settings) as running:
        pipeline.end_to_end(running, paths[:settings.batch_size], settings)  # a first job: the worker is warm
        pid = running.worker.process.pid
        worker_cpu, redis_cpu, own_cpu = cpu_seconds(pid), redis_pid and cpu_seconds(redis_pid), own_cpu_seconds()
        figures = []
        with sampled(pid, Path(tmp, "worker.raw")) as raw, interference.watch() as share:
            for _ in range(rounds):
                figures.append(pipeline.end_to_end(running, paths, settings))
        result = {"images": sum(f["images"] for f in figures), "seconds": sum(f["seconds"] for f in figures),
                  "worker_cpu_seconds": cpu_seconds(pid) - worker_cpu,
                  "producer_cpu_seconds": own_cpu_seconds() - own_cpu,
                  "decode_wall_seconds": sum(decode_ms(running.store, f) for f in figures) / 1000}
        result["others_share"] = share.others  # py-spy's own CPU among them
        if redis_pid:
            result["redis_cpu_seconds"] = cpu_seconds(redis_pid) - redis_cpu
        if raw is not None and raw.exists():
            result["python_samples"] = shares(raw)
    result["rate"] = result["images"] / result["seconds"]
    return result


def decode_ms(store, figures: dict) -> float:
    return sum(r.decode_ms or 0.0 for r in store.iter_records(figures["job"]))


def redis_pid_of(url: str) -> int | None:
    import redis

    with contextlib.suppress(redis.RedisError, KeyError, ValueError):
        return int(redis.Redis.from_url(url).info("server")["process_id"])
    return None


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--limit", type=click.IntRange(1), default=250, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 100), default=4, show_default=True,
              help="Jobs of all the photos, one after the other.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "int8"]), default="int8", show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--calibration", type=click.IntRange(8, 1000), default=200, show_default=True)
@click.option("--redis-url", default=None, help="A Redis to use (default: an embedded one, whose CPU is counted).")
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(folder, limit, rounds, precision, batch_size, calibration, redis_url, out):
    paths = images.list_images(folder, limit)
    result = {"machine": machine(), "precision": precision, "photos": len(paths), "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="imgq-bench-shares-") as tmp, \
            pipeline.redis_server(redis_url, tmp) as url:
        alone = model_alone(paths, batch_size, precision, calibration, os.path.join(tmp, "alone"))
        log(f"the model alone: {alone['images'] / alone['seconds']:.1f} images/s, "
            f"{alone['cpu_seconds'] / alone['images'] * 1000:.2f} CPU ms an image")
        settings = Settings(broker_url=url, namespace=f"imgqbench-{uuid.uuid4().hex[:8]}", weights="random",
                            runtime="openvino", precision=precision, batch_size=batch_size, state_dir=tmp,
                            calibration=folder if precision == "int8" else "", calibration_images=calibration)
        e2e = end_to_end(paths, settings, rounds, tmp, None if redis_url else redis_pid_of(url))
    per_image = {name: e2e[name] / e2e["images"] * 1000 for name in e2e if name.endswith("_cpu_seconds")}
    # Decoding's CPU is measured alone, on one thread (the records' decode_ms is wall time, stretched by the
    # forward passes competing for the cores).
    per_image["decode_cpu_seconds"] = alone["decode_cpu_seconds"] / alone["images"] * 1000
    model_ms = alone["cpu_seconds"] / alone["images"] * 1000
    rest_ms = per_image["worker_cpu_seconds"] - model_ms - per_image["decode_cpu_seconds"]
    result.update(model_alone=alone, end_to_end=e2e, cpu_ms_per_image={**per_image, "model": model_ms,
                                                                        "pipeline": rest_ms})
    result["machine"]["load_average_after"] = os.getloadavg()
    worker_ms = per_image["worker_cpu_seconds"]
    print(f"{result['machine']['cpu']} (family {result['machine']['cpu_family']}, model "
          f"{result['machine']['cpu_model']}), {precision}, load before/after "
          f"{result['machine']['load_average'][0]:.1f}/{os.getloadavg()[0]:.1f}")
    others = e2e.get("others_share")
    print(f"bare {alone['images'] / alone['seconds']:.1f} images/s; end to end {e2e['rate']:.1f} images/s "
          f"({e2e['rate'] / (alone['images'] / alone['seconds']):.2f}x); other processes "
          f"{'?' if others is None else f'{others:.0%}'} of the CPU meanwhile")
    print("| CPU ms an image | worker | model | decoding | pipeline | producer | Redis |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {precision} | {worker_ms:.2f} | {model_ms:.2f} ({model_ms / worker_ms:.0%}) | "
          f"{per_image['decode_cpu_seconds']:.2f} ({per_image['decode_cpu_seconds'] / worker_ms:.0%}) | "
          f"{rest_ms:.2f} ({rest_ms / worker_ms:.0%}) | {per_image['producer_cpu_seconds']:.2f} | "
          f"{per_image.get('redis_cpu_seconds', float('nan')):.2f} |")
    if "python_samples" in e2e:
        print("worker's Python threads, on-CPU samples: " +
              ", ".join(f"{k} {v:.0%}" for k, v in e2e["python_samples"].items()))
    if out:
        Path(out).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
