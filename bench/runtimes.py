"""The runtime as a dimension: bare OpenVINO fp32/bf16 beside bare TensorFlow fp32, and imgq end to end on
OpenVINO, on the ImageNet-size photos and (``--phone-folder``) on 12 MP phone photos, in one run.

Every ratio is to the bare TensorFlow fp32 model measured in the same run (``results["bare"]``), and each
end-to-end figure also to the bare model of its own runtime and precision.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time

from bench import images, model, pipeline
from imgq.settings import Settings


def in_process(results: dict, batches, batch_size: int, measured, log) -> None:
    """Bare OpenVINO fp32 and bf16 on the benchmark's batches, and the conversion's time in this process."""
    from worker.runtimes.openvino_runtime import OpenVINOClassifier
    from worker.runtimes.precision import resolve_precision

    with tempfile.TemporaryDirectory(prefix="imgq-bench-ov-") as cache:
        started = time.perf_counter()
        fp32 = OpenVINOClassifier("random", batch_size, "fp32", cache)
        fp32.warm_up()  # the conversion (TensorFlow is already loaded here) and the compilation
        results["ov_conversion_seconds"] = time.perf_counter() - started
        results["runtime"] = fp32.runtime
        # OpenVINO takes uint8 pixels (its graph preprocesses them): the caffe batches turned back into them
        pixels = [images.caffe_pixels(batch) for batch in batches]
        results["bare_ov_fp32"] = measured(log, model.bare_rate, fp32, pixels)
        log(f"bare OpenVINO fp32: {results['bare_ov_fp32']['rate']:.1f} images/s")
        if resolve_precision("bf16") == "bf16":
            bf16 = OpenVINOClassifier("random", batch_size, "bf16", cache)
            results["bare_ov_bf16"] = measured(log, model.bare_rate, bf16, pixels)
            log(f"bare OpenVINO bf16: {results['bare_ov_bf16']['rate']:.1f} images/s")
            del bf16
        del fp32


def with_workers(results: dict, paths: list[str], phone_paths: list[str], settings: Settings, measured,
                 log) -> None:
    """OpenVINO workers: the first start (converting) and a second one (the cached conversion), imgq fp32 on
    both kinds of photos, then a bf16 worker. One state directory, so the second start finds the cache."""
    ov = dataclasses.replace(settings, runtime="openvino")
    with pipeline.running_worker(ov) as running:
        results["worker_ov_first"] = {"startup_seconds": running.startup_seconds,
                                      "peak_rss_mb": running.peak_rss_mb()}
        log(f"OpenVINO worker, first start (converting): {running.startup_seconds:.1f} s")
    with pipeline.running_worker(ov) as running:
        results["worker_ov"] = {"startup_seconds": running.startup_seconds}
        log(f"OpenVINO worker, cached conversion: {running.startup_seconds:.1f} s")
        results["ov_photos"] = measured(log, pipeline.end_to_end, running, paths, ov)
        log(f"imgq OpenVINO fp32: {results['ov_photos']['rate']:.1f} images/s")
        if phone_paths:
            results["ov_phone"] = measured(log, pipeline.end_to_end, running, phone_paths, ov)
            log(f"imgq OpenVINO fp32, phone photos: {results['ov_phone']['rate']:.1f} images/s")
        results["worker_ov"]["peak_rss_mb"] = running.peak_rss_mb()
    if "bare_ov_bf16" in results:
        bf16 = dataclasses.replace(ov, precision="bf16")
        with pipeline.running_worker(bf16) as running:
            results["ov_bf16"] = measured(log, pipeline.end_to_end, running, paths, bf16)
            if phone_paths:
                results["ov_bf16_phone"] = measured(log, pipeline.end_to_end, running, phone_paths, bf16)
            results["worker_ov_bf16"] = {"startup_seconds": running.startup_seconds,
                                         "peak_rss_mb": running.peak_rss_mb()}
            log(f"imgq OpenVINO bf16: {results['ov_bf16']['rate']:.1f} images/s")
