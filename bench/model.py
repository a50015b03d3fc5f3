"""Throughput of the model alone: the compiled forward pass imgq runs, and Keras' per-image recipe.

Both run in the benchmark process while no worker is running: on a 2-core machine they would compete.
"""

from __future__ import annotations

import time

import numpy as np

WARM_UP_PASSES = 2
# Tracing and oneDNN's first-call work make the first pass ~2x slower, and the second is still a little slow
# (measured here: 3.1 s, 1.55 s, then 1.3-1.5 s per batch of 32): neither is throughput.


def load_model(batch_size: int):
    """``(keras model, Classifier)``: ResNet50 with the worker's seeded random weights (``random`` = seed 0)."""
    from worker.runtimes.keras_model import build_resnet50
    from worker.runtimes.tensorflow_runtime import Classifier

    model, weights_id = build_resnet50("random")
    return model, Classifier(model, weights_id, batch_size)


def bare_rate(classifier, batches: list[np.ndarray]) -> dict:
    """Images/s of the forward passes alone, over the full batches (the compiled shape), after a warm-up.

    A short last batch is left out: padded to the compiled shape it would cost a full pass for fewer images,
    and the bare figure is meant as the model's ceiling.
    """
    full = [b for b in batches if len(b) == classifier.batch_size] or batches
    for _ in range(WARM_UP_PASSES):
        classifier.predict(full[0])
    started = time.perf_counter()
    for batch in full:
        classifier.predict(batch)
    seconds = time.perf_counter() - started
    images = sum(len(b) for b in full)
    return {"images": images, "seconds": seconds, "rate": images / seconds}


def recipe_rate(model, paths: list[str]) -> dict:
    """Images/s of Keras' documented recipe, one image at a time: load_img, img_to_array, preprocess_input,
    model.predict. Its first image is a warm-up (model.predict traces its function on first call)."""
    from keras.applications.resnet50 import preprocess_input
    from keras.utils import img_to_array, load_img

    def classify(path: str) -> np.ndarray:
        x = img_to_array(load_img(path, target_size=(224, 224)))
        return model.predict(preprocess_input(x[None]), verbose=0)

    classify(paths[0])
    started = time.perf_counter()
    for path in paths:
        classify(path)
    seconds = time.perf_counter() - started
    return {"images": len(paths), "seconds": seconds, "rate": len(paths) / seconds}
