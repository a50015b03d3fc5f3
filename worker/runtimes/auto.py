"""IMGQ_RUNTIME=auto, the default: the faster runtime for this model on this CPU, measured and recorded.

OpenVINO is not the faster runtime for every model (on an AVX2-only EPYC, issue 17 saw EfficientNetV2-B0 run
at 29 img/s on OpenVINO and 47 on TensorFlow, ResNet50 at 20 and 12). So the choice is made per model and
per CPU, by measurement: both runtimes classify the same batch of pixels, their timed passes alternating
(so that a burst of other work on the machine slows both, not one), best of ``PASSES`` each after a warm-up,
and the faster wins (OpenVINO on a tie within TIE). The result is written beside the model's OpenVINO
conversion (``runtime-<cpu>-<precision>.json`` in its cache entry, worker/runtimes/ov_cache.py) with the figures and
the machine's load when measured, so that a later start on the same CPU reads it instead of measuring again;
a new CPU (another instance type) measures anew. Delete the file to measure again.

A choice measured under load, or by a small margin, is provisional (issue 25.7: measured at load 3.15 on 2
cores, TensorFlow won 38.6 to 30.0 img/s; quiet, OpenVINO wins 65.9 to 45.7, and every later start kept the
wrong one). Other work does not slow both runtimes alike: it takes the cores one runtime's threads wait for.
So a later start measures again when the machine is quiet then (the 1-minute load average per core at most
IMGQ_AUTO_QUIET_LOAD), and the record keeps the best figure of each runtime over its quiet measurements. A
choice is settled by a quiet measurement with a clear margin (SURE), or by CONFIRMATIONS quiet ones (the two
are then as fast as each other). The worker's ready line and `imgq status --workers` say which it is.

The load is read twice, when deciding to measure and after the race, and the higher counts: other work that
starts during the measurement shows. The worker's own start-up counts in it too (on a quiet 2-core machine it
adds about 0.2 a core): where a worker's start alone keeps a small machine above the threshold, raise it.

Without TensorFlow installed (the Dockerfile's ``openvino`` image) there is nothing to measure against:
OpenVINO. Without a working OpenVINO: TensorFlow, with a warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from imgq.models.spec import ModelSpec
from imgq.settings import Settings
from imgq.storage.files import atomic_path, read_regular
from worker.runtimes.base import warm

log = logging.getLogger(__name__)

PASSES = 3
SAMPLE = 8
# Images a pass (fewer when the batch is smaller): a first start measures in seconds, not minutes, even for
# EfficientNetV2-S on a busy 2-core machine. What is kept is which runtime is faster, not the figures.
TIE = 0.05  # OpenVINO unless TensorFlow is more than 5% faster: its cache makes later starts quicker
RECORD_MAX_BYTES = 64 * 1024  # a record is a few hundred bytes
SURE = 1.15
# A quiet measurement settles the choice when the faster runtime is at least 15% faster: on a quiet machine the
# best of three passes varies by a few percent between starts, so a closer call may go either way.
CONFIRMATIONS = 3
# Quiet measurements after which a closer call stands anyway: the two runtimes are then as fast as each other,
# and a fourth measurement would cost a start the time of loading TensorFlow for no gain.
MAX_MEASUREMENTS = 5
# Measurements of one record in all, quiet or not: a machine that never measures quiet (a worker's own start
# keeping a 1-core machine above IMGQ_AUTO_QUIET_LOAD) stops paying for a second runtime at every start.
RUNTIMES = ("openvino", "tensorflow")


def _load_average() -> float:
    return os.getloadavg()[0]


@dataclass(frozen=True)
class Machine:
    """What auto reads of the machine: the 1-minute load average, the cores, the clock, and what counts as
    quiet (IMGQ_AUTO_QUIET_LOAD, a load per core). Passed in, so that a test sets the load and the time it
    measures under instead of hoping for a busy or a quiet machine."""

    quiet_load: float = Settings().auto_quiet_load
    load: Callable[[], float] = _load_average
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    clock: Callable[[], float] = time.time

    def is_quiet(self, load: float, cores: int | None = None) -> bool:
        """Whether ``load`` (a load average on ``cores``, this machine's by default) counts as quiet."""
        return load <= self.quiet_load * (cores or self.cores)


@dataclass(frozen=True)
class Choice:
    """A measured choice, as its record keeps it: the runtime, the figures it was chosen on (img/s), the load
    and cores of the measurement they come from, and how many measurements, quiet or all, went into it."""

    runtime: str
    speeds: dict[str, float]
    load: float
    cores: int
    measured_at: str
    measurements: int = 1
    quiet_measurements: int = 0

    @property
    def ratio(self) -> float:
        """The chosen runtime's speed over the other's (under 1 on a tie that OpenVINO takes)."""
        other = next(name for name in RUNTIMES if name != self.runtime)
        return self.speeds[self.runtime] / self.speeds[other]

    @property
    def settled(self) -> bool:
        """Measured quiet, by a clear margin or confirmed: no start measures it again."""
        return self.quiet_measurements >= 1 and (self.ratio >= SURE or self.quiet_measurements >= CONFIRMATIONS)

    def measure_again(self, machine: Machine, load_now: float) -> bool:
        """Whether a start under ``load_now`` measures again: provisional, not measured too often, quiet now."""
        return not self.settled and self.measurements < MAX_MEASUREMENTS and machine.is_quiet(load_now)

    def describe(self) -> str:
        """How sure the choice is, for the ready line and the heartbeat: "auto: measured <when> quiet: openvino,
        1.44x" or "... at load 3.15 on 2 cores: tensorflow, 1.29x, provisional: will measure again when quiet"."""
        if self.quiet_measurements:
            where = "quiet" if self.quiet_measurements == 1 else f"quiet {self.quiet_measurements} times"
        else:
            where = f"at load {self.load:.2f} on {self.cores} {'core' if self.cores == 1 else 'cores'}"
        said = f"auto: measured {self.measured_at} {where}: {self.runtime}, {self.ratio:.2f}x"
        if self.settled:
            return said
        close = f"close, quiet {self.quiet_measurements} of {CONFIRMATIONS} times, " if self.quiet_measurements else ""
        if self.measurements >= MAX_MEASUREMENTS:
            return f"{said}, provisional: {close}measured {self.measurements} times, delete its record to measure again"
        return f"{said}, provisional: {close}will measure again when quiet"

    def record(self, **about) -> dict:
        """The record's JSON, ``about`` (the batch size, precision, CPU and model) added."""
        return {"choice": self.runtime, "images_per_second": {k: round(v, 2) for k, v in self.speeds.items()},
                "load_average": round(self.load, 2), "cores": self.cores, "measured_at": self.measured_at,
                "measurements": self.measurements, "quiet_measurements": self.quiet_measurements, **about}

    @classmethod
    def from_record(cls, record: dict, machine: Machine) -> Choice | None:
        """The choice a record holds, or None when it holds none that can be trusted (then it is measured
        again). A record written before choices could be provisional counts as one measurement, quiet or not
        by its load."""
        speeds = record.get("images_per_second")
        if record.get("choice") not in RUNTIMES or not isinstance(speeds, dict) or \
                not all(_positive(speeds.get(name)) for name in RUNTIMES):
            return None
        load = record.get("load_average")
        load = float(load) if _positive(load) or load == 0 else math.inf  # unknown: not quiet
        cores = record.get("cores") if isinstance(record.get("cores"), int) and record["cores"] > 0 else machine.cores
        measurements = _count(record.get("measurements"), 1)
        quiet = _count(record.get("quiet_measurements"), 1 if machine.is_quiet(load, cores) else 0)
        return cls(record["choice"], {name: float(speeds[name]) for name in RUNTIMES}, load, cores,
                   str(record.get("measured_at", "?")), measurements, min(quiet, measurements))


def measured(previous: Choice | None, speeds: dict[str, float], load: float, machine: Machine) -> Choice:
    """The choice after a measurement of ``speeds`` under ``load``, given what the record held before.

    Quiet, it is merged with earlier quiet measurements (each runtime's best figure: other work only ever
    slows a runtime down); under load, it replaces an earlier measurement under load, and adds nothing to
    quiet ones (it is counted, so that a machine never quiet stops measuring: MAX_MEASUREMENTS)."""
    count = (previous.measurements if previous else 0) + 1
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(machine.clock()))
    quiet_before = previous is not None and previous.quiet_measurements > 0
    if not machine.is_quiet(load):
        if quiet_before:
            return dataclasses.replace(previous, measurements=count)
        return Choice(_faster(speeds), dict(speeds), load, machine.cores, at, count, 0)
    if quiet_before:
        speeds = {name: max(speeds[name], previous.speeds[name]) for name in RUNTIMES}
        load = max(load, previous.load)
    quiet = (previous.quiet_measurements if quiet_before else 0) + 1
    return Choice(_faster(speeds), dict(speeds), load, machine.cores, at, count, quiet)


def _faster(speeds: dict[str, float]) -> str:
    """OpenVINO unless TensorFlow is more than TIE faster."""
    return "tensorflow" if speeds["tensorflow"] > speeds["openvino"] * (1 + TIE) else "openvino"


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _count(value, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


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
                    machine: Machine | None = None, say: Callable[[str], None] = log.info):
    """The classifier of the faster runtime for ``spec`` on this CPU (see the module's docstring), measured
    on ``machine`` (this one by default), warmed up. ``say`` is told each long step before it begins. Raises
    WeightsError when the model cannot be loaded at all."""
    from worker.runtimes.keras_model import build_model
    from worker.runtimes.openvino_runtime import OpenVINOError, load_openvino
    from worker.runtimes.precision import enable_precision
    from worker.runtimes.tensorflow_runtime import Classifier

    machine = machine or Machine()
    try:
        openvino = load_openvino(weights, batch_size, precision, cache_dir, spec=spec)
        warm(openvino, say)
    except OpenVINOError as exc:
        if not tensorflow_installed():
            raise  # nothing else can run it: the worker stops with OpenVINO's reason
        log.warning("IMGQ_RUNTIME=auto: OpenVINO cannot run %s here (%s): TensorFlow", spec.id, exc)
        openvino = None
    if openvino is not None and not tensorflow_installed():
        return _chosen(openvino, "auto: TensorFlow is not installed to compare with")
    description, cpu = cpu_fingerprint()
    entry = openvino.cache_entry() if openvino is not None else None
    record_path = os.path.join(entry.folder, f"runtime-{cpu}-{precision}.json") if entry else None
    recorded = Choice.from_record(_read(record_path), machine)
    load_now = machine.load()
    keep = recorded is not None and not recorded.measure_again(machine, load_now)
    if openvino is not None and keep and recorded.runtime == "openvino":
        return _chosen(openvino, recorded.describe())
    say(f"building {spec.id} for TensorFlow")
    keras_model, weights_id, full_spec = build_model(openvino.spec if openvino else spec, weights)
    tensorflow = Classifier(keras_model, weights_id, batch_size, enable_precision(precision), spec=full_spec)
    warm(tensorflow, say)
    if openvino is None:
        return _chosen(tensorflow, "auto: OpenVINO cannot run it here")
    if keep and recorded.runtime == "tensorflow":
        return _chosen(tensorflow, recorded.describe())
    if recorded is None:
        log.info("IMGQ_RUNTIME=auto: measuring OpenVINO against TensorFlow for %s on this CPU (recorded in %s)",
                 spec.id, record_path)
    else:
        log.info("IMGQ_RUNTIME=auto: measuring %s again, the machine being quiet now (load %.2f on %d cores): "
                 "it was %s", spec.id, load_now, machine.cores, recorded.describe())
    say(f"measuring {openvino.runtime} against {tensorflow.runtime} for {spec.id} on this CPU (the choice is "
        "recorded for later starts)")
    pixels = list(np.random.default_rng(0).integers(0, 256, size=(min(batch_size, SAMPLE), *tensorflow.target.shape),
                                                    dtype=np.uint8))
    speeds = race({"openvino": openvino, "tensorflow": tensorflow}, pixels)
    # Other work that started during the measurement shows in the load after it.
    choice = measured(recorded, speeds, max(load_now, machine.load()), machine)
    log.info("IMGQ_RUNTIME=auto: img/s openvino %.1f, tensorflow %.1f", speeds["openvino"], speeds["tensorflow"])
    if record_path:
        record = choice.record(batch_size=len(pixels), precision=precision, cpu=description, model=spec.id)
        try:
            with atomic_path(record_path) as tmp, open(tmp, "w") as file:
                json.dump(record, file)
        except OSError as exc:
            log.warning("IMGQ_RUNTIME=auto: choice not recorded in %s: %s", record_path, exc)
    return _chosen(openvino if choice.runtime == "openvino" else tensorflow, choice.describe())


def _chosen(classifier, reason: str):
    """``classifier``, carrying why auto chose it and how sure that is (``chosen_by``: the worker's ready line
    and heartbeat say it)."""
    classifier.chosen_by = reason
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
