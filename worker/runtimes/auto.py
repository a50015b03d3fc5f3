"""IMGQ_RUNTIME=auto, the default: the faster runtime for this model on this CPU, measured once and recorded.

OpenVINO is not the faster runtime for every model (on an AVX2-only EPYC, issue 17 saw EfficientNetV2-B0 run
at 29 img/s on OpenVINO and 47 on TensorFlow, ResNet50 at 20 and 12). So the choice is made per model and
per CPU, by measurement: both runtimes classify the same batch of pixels, their timed passes alternating
(so that a burst of other work on the machine slows both, not one), best of ``PASSES`` each after a warm-up,
and the faster wins (OpenVINO on a tie within TIE). The result is written beside the model's OpenVINO
conversion (``runtime-<cpu>-<precision>.json`` in its cache entry, worker/runtimes/ov_cache.py) with the figures and
the machine's load when measured, so that a later start on the same CPU reads it instead of measuring again;
a new CPU (another instance type) measures anew. Delete the file to measure again (the machine was busy, say).

Without TensorFlow installed (the Dockerfile's ``openvino`` image) there is nothing to measure against:
OpenVINO. Without a working OpenVINO: TensorFlow, with a warning.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from imgq.models.spec import ModelSpec
from imgq.storage.files import atomic_path, read_regular
from worker.runtimes.base import warm

log = logging.getLogger(__name__)

PASSES = 3
SAMPLE = 8
# Images a pass (fewer when the batch is smaller): a first start measures in seconds, not minutes, even for
# EfficientNetV2-S on a busy 2-core machine. What is kept is which runtime is faster, not the figures.
TIE = 0.05  # OpenVINO unless TensorFlow is more than 5% faster: its cache makes later starts quicker
RECORD_MAX_BYTES = 64 * 1024  # a record is a few hundred bytes


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


def race(classifiers: dict[str, object], pixels: list[np.ndarray], passes: int = PASSES) -> dict[str, float]:
    """Images per second of each classifier on ``pixels`` (input preparation and forward pass): one untimed
    pass each, then ``passes`` timed rounds in which each runs once, in turn; the best pass of each counts."""
    for classifier in classifiers.values():
        classifier.predict(classifier.model_input(pixels))
    best = dict.fromkeys(classifiers, float("inf"))
    for _ in range(passes):
        for name, classifier in classifiers.items():
            started = time.perf_counter()
            classifier.predict(classifier.model_input(pixels))
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: len(pixels) / seconds for name, seconds in best.items()}


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported here (the openvino image leaves it out), without importing it."""
    return importlib.util.find_spec("tensorflow") is not None


def auto_classifier(spec: ModelSpec, weights: str, batch_size: int, precision: str, cache_dir: str | None,
                    say: Callable[[str], None] = log.info):
    """The classifier of the faster runtime for ``spec`` on this CPU (see the module's docstring), warmed up.
    ``say`` is told each long step before it begins. Raises WeightsError when the model cannot be loaded at
    all."""
    from worker.runtimes.keras_model import build_model
    from worker.runtimes.openvino_runtime import OpenVINOError, load_openvino
    from worker.runtimes.precision import enable_precision
    from worker.runtimes.tensorflow_runtime import Classifier

    try:
        openvino = load_openvino(weights, batch_size, precision, cache_dir, spec=spec)
        warm(openvino, say)
    except OpenVINOError as exc:
        if not tensorflow_installed():
            raise  # nothing else can run it: the worker stops with OpenVINO's reason
        log.warning("IMGQ_RUNTIME=auto: OpenVINO cannot run %s here (%s): TensorFlow", spec.id, exc)
        openvino = None
    if openvino is not None and not tensorflow_installed():
        return _chosen(openvino, "TensorFlow is not installed to compare with")
    description, cpu = cpu_fingerprint()
    entry = openvino.cache_entry() if openvino is not None else None
    record_path = os.path.join(entry.folder, f"runtime-{cpu}-{precision}.json") if entry else None
    recorded = _read(record_path)
    if openvino is not None and recorded.get("choice") == "openvino":
        return _chosen(openvino, _measured(recorded))
    say(f"building {spec.id} for TensorFlow")
    keras_model, weights_id, full_spec = build_model(openvino.spec if openvino else spec, weights)
    tensorflow = Classifier(keras_model, weights_id, batch_size, enable_precision(precision), spec=full_spec)
    warm(tensorflow, say)
    if openvino is None:
        return _chosen(tensorflow, "OpenVINO cannot run it here")
    if recorded.get("choice") == "tensorflow":
        return _chosen(tensorflow, _measured(recorded))
    log.info("IMGQ_RUNTIME=auto: measuring OpenVINO against TensorFlow for %s on this CPU (once; recorded in %s)",
             spec.id, record_path)
    say(f"measuring {openvino.runtime} against {tensorflow.runtime} for {spec.id} on this CPU (once: the choice "
        "is recorded for later starts)")
    pixels = list(np.random.default_rng(0).integers(0, 256, size=(min(batch_size, SAMPLE), *tensorflow.target.shape),
                                                    dtype=np.uint8))
    speeds = race({"openvino": openvino, "tensorflow": tensorflow}, pixels)
    choice = "tensorflow" if speeds["tensorflow"] > speeds["openvino"] * (1 + TIE) else "openvino"
    record = {"choice": choice, "images_per_second": {k: round(v, 2) for k, v in speeds.items()},
              "batch_size": len(pixels), "precision": precision, "cpu": description, "model": spec.id,
              "load_average": round(os.getloadavg()[0], 2),
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if record_path:
        try:
            with atomic_path(record_path) as tmp, open(tmp, "w") as file:
                json.dump(record, file)
        except OSError as exc:
            log.warning("IMGQ_RUNTIME=auto: choice not recorded in %s: %s", record_path, exc)
    return _chosen(openvino if choice == "openvino" else tensorflow, _measured(record))


def _measured(record: dict) -> str:
    speeds = record.get("images_per_second") or {}
    return (f"measured {record.get('measured_at', '?')}: img/s openvino {speeds.get('openvino', '?')}, "
            f"tensorflow {speeds.get('tensorflow', '?')} at load {record.get('load_average', '?')}")


def _chosen(classifier, reason: str):
    """``classifier``, carrying why auto chose it (``chosen_by``, which the worker's ready line prints)."""
    classifier.chosen_by = f"auto: {reason}"
    log.info("IMGQ_RUNTIME=auto chose %s for %s (%s)", classifier.runtime, classifier.model_id, reason)
    return classifier


def _read(path: str | None) -> dict:
    """The record at ``path`` ({} when none, or not a small regular JSON file: then it is measured again)."""
    if not path:
        return {}
    try:
        found = read_regular(path, RECORD_MAX_BYTES)
        record = json.loads(found[0]) if found else {}
    except (OSError, ValueError):  # RefusedFile is a ValueError
        return {}
    return record if isinstance(record, dict) else {}
