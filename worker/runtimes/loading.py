"""Loading the model a worker serves (imgq/models/spec.py's ModelSpec) on the runtime asked for: TensorFlow,
OpenVINO, or auto (the faster of the two for this model on this CPU).

Import this module only in the process that runs the model: the runtimes import TensorFlow or OpenVINO.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from imgq.models.spec import DEFAULT_MODEL, ModelSpec
from worker.runtimes.base import ModelRuntime, warm
from worker.runtimes.keras_model import build_model, model_spec
from worker.runtimes.precision import enable_precision, resolve_precision
from worker.runtimes.probe import check_outputs
from worker.runtimes.tensorflow_runtime import Classifier

if TYPE_CHECKING:
    from worker.runtimes.auto import Machine
    from worker.runtimes.int8_serving import Int8Options

log = logging.getLogger(__name__)

RUNTIMES = ("openvino", "tensorflow", "auto")


def load_classifier(weights: str, batch_size: int, precision: str = "fp32", runtime: str = "tensorflow",
                    cache_dir: str | None = None, model: str | ModelSpec = DEFAULT_MODEL,
                    int8: Int8Options | None = None, machine: Machine | None = None,
                    say: Callable[[str], None] | None = None) -> ModelRuntime:
    """Build ``model`` (a built-in name, a model folder, or a ModelSpec) with ``weights`` for ``runtime``,
    compile and warm it up. ``say`` is told each long step before it begins (``warming up ...``; default: the
    log), so that a worker tells what it is doing while it starts (worker/startup.py).

    ``precision``: fp32, bf16 where the CPU supports it (worker/runtimes/precision.py), or int8 (OpenVINO
    whatever ``runtime`` says but tensorflow, calibrated as ``int8`` says: worker/runtimes/int8_serving.py;
    the settings refuse int8 with tensorflow). ``runtime``:
    tensorflow, openvino (the Keras model converted, the conversion cached under ``cache_dir``; see
    worker/runtimes/openvino_runtime.py), or auto (the faster of the two for this model on this CPU, measured
    and recorded with the conversion, on ``machine``, this one by default: worker/runtimes/auto.py). Raises
    WeightsError (OpenVINOError, a kind of it, for the runtime), also when the warm model's outputs for
    test pictures are not finite, or not probabilities for a model declared softmax (worker/runtimes/probe.py).
    """
    started = time.perf_counter()
    say = say or _log_step
    spec = model_spec(model)
    classifier: ModelRuntime
    if precision == "int8":  # auto never picks int8, and int8 runs on OpenVINO only
        from worker.runtimes.int8_serving import Int8Options, load_int8

        classifier = load_int8(spec, weights, batch_size, cache_dir, int8 or Int8Options())
        warm(classifier, say)
    elif runtime == "auto":
        from worker.runtimes.auto import auto_classifier

        # auto warms each runtime it loads, to measure them: it returns a warm one
        classifier = auto_classifier(spec, weights, batch_size, resolve_precision(precision), cache_dir, machine,
                                     say=say)
    else:
        if runtime == "openvino":
            from worker.runtimes.openvino_runtime import load_openvino

            classifier = load_openvino(weights, batch_size, resolve_precision(precision), cache_dir, spec=spec)
        else:
            precision = enable_precision(precision)
            keras_model, weights_id, spec = build_model(spec, weights)
            classifier = Classifier(keras_model, weights_id, batch_size, precision, spec=spec)
        warm(classifier, say)
    check_outputs(classifier)  # here, not in each warm_up: every runtime passes it
    classifier.load_seconds = time.perf_counter() - started
    log.info("%s ready with weights %s, %s on %s, in %.1f s", classifier.model_id, classifier.weights_id,
             classifier.precision, classifier.runtime, classifier.load_seconds)
    return classifier


def _log_step(step: str) -> None:
    log.info("%s", step)
