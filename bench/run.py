"""One benchmark run, in order: everything in this process first (no worker competing for the cores),
then a worker per precision, then the producer alone. Every scenario uses the same images."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from bench import REPO, decode, images, interference, model, pipeline, precision, queueing, runtimes
from imgq.results.store import delete_namespace
from imgq.settings import Settings

SCENARIOS = ("photos", "tiny", "producer", "bf16", "runtimes")
TINY_JOBS = 200  # the figure; --tiny-jobs changes it for a quick check
RECIPE_IMAGES = 64  # the recipe is slow: a subset of the same images
QUIET = 0.10  # other processes' CPU share above which a measurement waits for them to finish
QUIET_WAIT = 300.0  # ...for at most this long; the share is reported with every figure either way
ATTEMPTS = 3  # measurements of one figure at most, when other processes disturb it


def run(folder: str, *, limit: int | None, batch_size: int, scenarios: tuple[str, ...], redis_url: str | None,
        jpeg_draft: bool, tiny_jobs: int = TINY_JOBS, phone_folder: str | None = None,
        quiet_wait: float = QUIET_WAIT, attempts: int = ATTEMPTS, log=print) -> dict:
    """Every figure of the run, as a dict (see bench.report for the tables). ``phone_folder``: 12 MP photos
    that the runtimes scenario also runs end to end on (TensorFlow and OpenVINO). ``quiet_wait``,
    ``attempts``: the patience of ``measured`` with a busy machine (a shared one may never be quiet)."""
    global QUIET_WAIT, ATTEMPTS
    QUIET_WAIT, ATTEMPTS = quiet_wait, attempts
    # Children (the worker, `imgq`) import the same tree as this process, not the one the venv's editable
    # install points at: the benchmark may run in a clean clone while others edit the main work tree.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    paths = images.list_images(folder, limit)
    phone_paths = images.list_images(phone_folder, None) if phone_folder and "runtimes" in scenarios else []
    results = {"folder": folder, "images": len(paths), "batch_size": batch_size, "jpeg_draft": jpeg_draft,
               "scenarios": list(scenarios), "tiny_jobs": tiny_jobs, "megapixels": images.median_megapixels(paths),
               "kind": images.photo_kind(paths), "machine": machine(), "git": git_state(),
               "phone_folder": phone_folder, "phone_images": len(phone_paths), "quiet_wait": quiet_wait,
               "attempts": attempts}
    log(f"{len(paths)} images ({results['kind']}); measuring the model in this process")
    in_process(results, paths, batch_size, scenarios, log)
    with tempfile.TemporaryDirectory(prefix="imgq-bench-") as tmp, pipeline.redis_server(redis_url, tmp) as url:
        # The scenarios before "runtimes" measure TensorFlow, as they did before OpenVINO became the default.
        settings = Settings(broker_url=url, namespace=f"imgqbench-{uuid.uuid4().hex[:8]}", weights="random",
                            runtime="tensorflow",
                            batch_size=batch_size, jpeg_draft=jpeg_draft, state_dir=str(Path(tmp, "state")))
        try:
            with_workers(results, paths, settings, scenarios, log, phone_paths)
            if "runtimes" in scenarios:
                runtimes.with_workers(results, paths, phone_paths, settings, measured, log)
            if "producer" in scenarios:
                producer(results, settings, tmp, log)
        finally:
            delete_namespace(url, settings.namespace)
    return results


def in_process(results: dict, paths: list[str], batch_size: int, scenarios, log) -> None:
    keras_model, classifier = model.load_model(batch_size)
    batches = images.model_batches(paths, batch_size)
    results["bare"] = measured(log, model.bare_rate, classifier, batches)
    log(f"bare model: {results['bare']['rate']:.1f} images/s")
    if "photos" in scenarios or "bf16" in scenarios:
        results["recipe"] = measured(log, model.recipe_rate, keras_model, paths[:RECIPE_IMAGES])
        log(f"Keras recipe: {results['recipe']['rate']:.1f} images/s")
    if "photos" in scenarios:
        results["decode"] = decode.measure(paths)
    if "bf16" in scenarios:
        flags = precision.cpu_bf16_flags()
        if not flags:
            results["bf16_accuracy"] = {"skipped": "the CPU has neither avx512_bf16 nor amx_bf16"}
        else:
            tf_bf16(results, keras_model, classifier, batches, batch_size, flags, log)
    if "runtimes" in scenarios:
        runtimes.in_process(results, batches, batch_size, measured, log)


def tf_bf16(results: dict, keras_model, classifier, batches, batch_size: int, flags: list[str], log) -> None:
    """The bare TensorFlow model with oneDNN's bfloat16, and how far its outputs move from fp32's."""
    with precision.bf16_graphs():
        results["bare_bf16"] = measured(log, model.bare_rate, classifier, batches)
    results["bf16_accuracy"] = {"cpu_flags": flags, **precision.compare(keras_model, batches, batch_size)}
    log(f"bare model bf16: {results['bare_bf16']['rate']:.1f} images/s")


def with_workers(results: dict, paths: list[str], settings: Settings, scenarios, log,
                 phone_paths: list[str] = ()) -> None:
    # bf16 is judged against the fp32 end-to-end rate; runtimes compares OpenVINO's with it
    fp32_run = "photos" in scenarios or "bf16" in scenarios or "runtimes" in scenarios
    if fp32_run or "tiny" in scenarios:
        with pipeline.running_worker(settings) as running:
            results["worker"] = {"startup_seconds": running.startup_seconds}
            log(f"fp32 worker ready in {running.startup_seconds:.1f} s")
            if fp32_run:
                results["photos"] = measured(log, pipeline.end_to_end, running, paths, settings)
                log(f"imgq fp32: {results['photos']['rate']:.1f} images/s")
            if phone_paths:
                results["phone"] = measured(log, pipeline.end_to_end, running, phone_paths, settings)
                log(f"imgq fp32, phone photos: {results['phone']['rate']:.1f} images/s")
            if "tiny" in scenarios:
                results["tiny"] = measured(log, pipeline.tiny_jobs, running, paths, settings, results["tiny_jobs"])
                log(f"imgq tiny jobs: {results['tiny']['rate']:.1f} images/s")
            results["worker"]["peak_rss_mb"] = running.peak_rss_mb()
    if "bf16" in scenarios and "bare_bf16" in results:
        bf16 = dataclasses.replace(settings, precision="bf16")
        with pipeline.running_worker(bf16) as running:
            results["bf16"] = measured(log, pipeline.end_to_end, running, paths, bf16)
            results["worker_bf16"] = {"startup_seconds": running.startup_seconds,
                                      "peak_rss_mb": running.peak_rss_mb()}
            log(f"imgq bf16: {results['bf16']['rate']:.1f} images/s")


def producer(results: dict, settings: Settings, tmp: str, log) -> None:
    root = str(Path(tmp, "tree"))
    log(f"writing {queueing.make_tree(root):,} small files for the producer")
    results["producer"] = queueing.time_submit(root, settings)
    results["cli_submit"] = queueing.time_cli_submit(root, settings)
    results["help"] = queueing.time_help()
    shutil.rmtree(root, ignore_errors=True)
    log(f"producer: {results['producer']['seconds']:.1f} s for {results['producer']['paths']:,} paths")


def measured(log, measure, *args) -> dict:
    """``measure(*args)`` with the share of the machine's CPU that other processes took meanwhile.

    Each attempt starts once the machine is quiet (or after QUIET_WAIT s); one disturbed by other processes
    anyway is run again, up to ATTEMPTS times, and the least disturbed attempt is kept.
    """
    best = None
    for attempt in range(1, ATTEMPTS + 1):
        interference.wait_quiet(QUIET, QUIET_WAIT, log)
        with interference.watch() as share:
            figures = measure(*args)
        figures = {**figures, "other_cpu": share.others, "steal": share.steal, "attempt": attempt}
        if best is None or (share.others or 0) < (best["other_cpu"] or 0):
            best = figures
        if share.others is None or share.others <= QUIET:
            break
        log(f"other processes took {share.others:.0%} of the CPU during {measure.__name__}: measuring again")
    return best


def machine() -> dict:
    """CPU model, core count and the flags that decide oneDNN's kernels."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    field = {line.split(":")[0].strip(): line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
             if ":" in line}
    flags = field.get("flags", "").split()
    relevant = [f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")]
    # The model name alone says "AMD EPYC" for Zen 4 and Zen 5 guests alike: family and model tell them apart.
    return {"cpu": field.get("model name", platform.processor()), "cpu_family": field.get("cpu family"),
            "cpu_model": field.get("model"), "cores": os.cpu_count(), "flags": relevant,
            "load_average": os.getloadavg(), "python": platform.python_version(), "tensorflow": _tf_version()}


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def git_state() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"tree": str(REPO), "commit": git("rev-parse", "--short", "HEAD") or "unknown",
            "status": git("status", "--short")}
