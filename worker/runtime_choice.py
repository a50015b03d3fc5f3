"""IMGQ_RUNTIME=auto: the faster runtime for this model on this CPU, measured once and recorded.

OpenVINO is not the faster runtime for every model (on an AVX2-only EPYC, issue 17 saw EfficientNetV2-B0 run
at 29 img/s on OpenVINO and 47 on TensorFlow, ResNet50 at 20 and 12). So the choice is made per model and
per CPU, by measurement: both runtimes classify the same batch of pixels (after a warm-up, best of
``PASSES``), and the faster wins (OpenVINO on a tie within TIE). The result is written beside the model's
OpenVINO conversion (``runtime-<cpu>.json`` in its cache entry, worker/ov_cache.py) with the figures, so
that a later start on the same CPU reads it instead of measuring again; a new CPU (another instance type)
measures anew. Delete the file to measure again (the machine was busy, say).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time

import numpy as np

from imgq.files import atomic_path
from imgq.models import ModelSpec

log = logging.getLogger(__name__)

PASSES = 3
TIE = 0.05  # OpenVINO unless TensorFlow is more than 5% faster: its cache makes later starts quicker


def cpu_fingerprint(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, str]:
    """``(description, 12-hex id)`` of this CPU: its model name, core count and instruction-set flags."""
    name, flags = platform.processor() or platform.machine(), ""
    try:
        with open(cpuinfo) as file:
            for line in file:
                if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    description = f"{name}, {os.cpu_count()} cores"
    return description, hashlib.sha256(f"{description}|{flags}".encode()).hexdigest()[:12]


def measure(classifier, pixels: list[np.ndarray], passes: int = PASSES) -> float:
    """Images per second of ``classifier`` on ``pixels`` (input preparation and forward pass), best of
    ``passes`` after one untimed pass."""
    classifier.predict(classifier.model_input(pixels))
    best = float("inf")
    for _ in range(passes):
        started = time.perf_counter()
        classifier.predict(classifier.model_input(pixels))
        best = min(best, time.perf_counter() - started)
    return len(pixels) / best


def auto_classifier(spec: ModelSpec, weights: str, batch_size: int, precision: str, cache_dir: str | None):
    """The classifier of the faster runtime for ``spec`` on this CPU (see the module's docstring). Raises
    WeightsError when the model cannot be loaded at all."""
    from worker.model import Classifier, build_model, enable_precision
    from worker.openvino_runtime import OpenVINOError, load_openvino

    try:
        openvino = load_openvino(weights, batch_size, precision, cache_dir, spec=spec)
        openvino.warm_up()
    except OpenVINOError as exc:
        log.warning("IMGQ_RUNTIME=auto: OpenVINO cannot run %s here (%s): TensorFlow", spec.id, exc)
        openvino = None
    description, cpu = cpu_fingerprint()
    entry = openvino.cache_entry() if openvino is not None else None
    record_path = os.path.join(entry.folder, f"runtime-{cpu}-{precision}.json") if entry else None
    recorded = _read(record_path)
    if openvino is not None and recorded.get("choice") == "openvino":
        log.info("IMGQ_RUNTIME=auto: openvino for %s on this CPU (measured %s)", spec.id, recorded.get("measured_at"))
        return openvino
    keras_model, weights_id, full_spec = build_model(openvino.spec if openvino else spec, weights)
    tensorflow = Classifier(keras_model, weights_id, batch_size, enable_precision(precision), spec=full_spec)
    if openvino is None or recorded.get("choice") == "tensorflow":
        return tensorflow
    pixels = list(np.random.default_rng(0).integers(0, 256, size=(batch_size, *tensorflow.target.shape),
                                                    dtype=np.uint8))
    tensorflow.warm_up()
    speeds = {"openvino": measure(openvino, pixels), "tensorflow": measure(tensorflow, pixels)}
    choice = "tensorflow" if speeds["tensorflow"] > speeds["openvino"] * (1 + TIE) else "openvino"
    record = {"choice": choice, "images_per_second": {k: round(v, 2) for k, v in speeds.items()},
              "batch_size": batch_size, "precision": precision, "cpu": description, "model": spec.id,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    log.info("IMGQ_RUNTIME=auto: %s for %s on %s (img/s openvino %.1f, tensorflow %.1f)", choice, spec.id,
             description, speeds["openvino"], speeds["tensorflow"])
    if record_path:
        try:
            with atomic_path(record_path) as tmp, open(tmp, "w") as file:
                json.dump(record, file)
        except OSError as exc:
            log.warning("IMGQ_RUNTIME=auto: choice not recorded in %s: %s", record_path, exc)
    return openvino if choice == "openvino" else tensorflow


def recorded_choice(classifier) -> dict:
    """What auto recorded for ``classifier``'s model on this CPU ({} when nothing)."""
    entry = classifier.cache_entry() if hasattr(classifier, "cache_entry") else None
    if entry is None:
        return {}
    _, cpu = cpu_fingerprint()
    return _read(os.path.join(entry.folder, f"runtime-{cpu}-{classifier.precision}.json"))


def _read(path: str | None) -> dict:
    if not path:
        return {}
    try:
        with open(path) as file:
            record = json.load(file)
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}
