"""The check a warm model passes before it serves: its outputs for two test pictures are probabilities.

A model whose weights are NaN (a training that diverged) gives NaN for every picture; a model folder that
declares ``outputs = "softmax"`` (the default) while its last layer gives logits gives scores that are not
probabilities. Either would fill every record with nonsense, so the worker refuses to start with one line
instead (worker/runtimes/loading.py runs this after ``warm_up``, whatever the runtime). A model that is not
finite for some pictures only is served: those images get ``model_output`` records (worker/batches/batch.py).
"""

from __future__ import annotations

import os

import numpy as np

from imgq.models.folder import MANIFEST_FILE
from worker.runtimes.base import ModelRuntime
from worker.runtimes.keras_model import WeightsError

PROBE_SEED = 25
SOFTMAX_TOLERANCE = 0.02
# How far from 1 a softmax's sum may be, and below 0 an output: float32 rounding is ~1e-6, bf16's ~1e-2 at
# worst over a thousand classes. Logits summing within 0.02 of 1 on both pictures, none negative: no real model.


def probe_pixels(shape: tuple[int, int, int]) -> list[np.ndarray]:
    """Two textured test pictures of ``shape`` (uint8, as decoded): noise over the whole range, and a smooth
    ramp with some noise. Never a flat picture: a model may divide by a picture's spread, and rightly give a
    flat one no probabilities (that image's record says model_output; the model itself is sound)."""
    rng = np.random.default_rng(PROBE_SEED)
    height, width, channels = shape
    noise = rng.integers(0, 256, size=shape, dtype=np.uint8)
    ramp = np.linspace(0.0, 255.0, height * width).reshape(height, width, 1) + rng.normal(0, 8, shape)
    return [noise, np.clip(ramp, 0, 255).astype(np.uint8)]


def check_outputs(classifier: ModelRuntime) -> None:
    """Raises WeightsError (one line naming the model and the fix) when the warm ``classifier``'s outputs for
    the probe pictures are not finite numbers, or, for a model whose outputs are declared softmax, do not sum
    to 1 (within SOFTMAX_TOLERANCE) or are negative. Costs one forward pass of two pictures."""
    outputs = classifier.predict(classifier.model_input(probe_pixels(classifier.target.shape)))
    spec = classifier.spec
    where = spec.model_path or f"{spec.name} with weights {classifier.weights_id}"
    if not np.isfinite(outputs).all():
        raise WeightsError(f"{where}: the model's outputs for test pictures are not finite numbers (NaN or "
                           f"infinite): its weights or a layer are broken (a training that diverged, a division "
                           f"by zero); it cannot serve.")
    if spec.outputs != "softmax":  # logits: as_probabilities made them probabilities
        return
    sums = outputs.sum(axis=1, dtype=np.float64)
    if outputs.min() < -SOFTMAX_TOLERANCE or np.abs(sums - 1.0).max() > SOFTMAX_TOLERANCE:
        fix = (f'set outputs = "logits" in {os.path.join(spec.folder, MANIFEST_FILE)}' if spec.folder else
               "its weights do not fit the model")
        raise WeightsError(f"{where}: the model's outputs for test pictures are not probabilities (they sum to "
                           f"{' and '.join(f'{s:.3g}' for s in sums)}, not 1; the least is {outputs.min():.3g}): "
                           f"if its last layer gives logits, {fix}.")
