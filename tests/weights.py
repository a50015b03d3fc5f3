"""Test weights whose labels depend on the image: what a parity test between runtimes needs.

Random weights label nearly every picture with the same class, so two runtimes "agreeing" would prove
little. These keep the random convolutions of ``random:SEED`` and set the last Dense layer (the classifier)
from the avg_pool features of a set of generated pictures: picture i's features point along column i, so
its top-1 is class i. The other columns get small random values, so that the rest of the top-5 is ordered
by real margins, not ties.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SEED = 11
SCALE = 12.0  # logit of a picture's own class, over its centred features' norm: top-1 well above the rest
NOISE = 0.02  # the other columns' spread, relative to the feature scale: orders the rest of the top-5


def picture(seed: int, size: tuple[int, int] = (256, 192)) -> np.ndarray:
    """An RGB uint8 picture unlike the others: smooth colour fields, stripes at an angle, blobs."""
    rng = np.random.default_rng(1000 + seed)
    width, height = size
    coarse = rng.integers(0, 256, size=(rng.integers(2, 6), rng.integers(2, 6), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC), dtype=np.float32)
    y, x = np.mgrid[0:height, 0:width]
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 40)
    stripes = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
    image = base * 0.7 + (stripes[..., None] * rng.uniform(20, 80, size=3))
    for _ in range(rng.integers(1, 5)):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 60)
        image[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(0, 256, size=3)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_pictures(folder: Path, count: int) -> list[Path]:
    """``count`` distinct PNG pictures (lossless: every runtime decodes the same pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"picture-{i:02d}.png"
        Image.fromarray(picture(i)).save(path)
        paths.append(path)
    return paths


def model_input(paths: list[Path], target=None, preprocessing: str = "caffe") -> np.ndarray:
    """The pictures decoded and preprocessed exactly as a worker does it for TensorFlow (float32)."""
    from worker.images.preprocess import to_model_input

    pixels = decoded(paths, target)
    batch = np.empty(pixels.shape, dtype=np.float32)
    for row, image in zip(batch, pixels, strict=True):
        to_model_input(image, out=row, preprocessing=preprocessing)
    return batch


def decoded(paths: list[Path], target=None) -> np.ndarray:
    """The pictures decoded as a worker does it: uint8 pixels of ``target`` (ResNet50's by default), what
    the OpenVINO runtime takes."""
    from worker.images.preprocess import RESNET50, load_pixels

    return np.stack([load_pixels(str(path), target=target or RESNET50) for path in paths])


def image_dependent_weights(paths: list[Path], out: Path, seed: int = SEED, model_name: str = "resnet50") -> Path:
    """Write ``out`` (.weights.h5): a built-in model (ResNet50 by default) with ``random:seed`` convolutions
    whose top-1 for ``paths[i]`` is class i. Raises AssertionError if the pictures do not get distinct labels
    (too similar features)."""
    from imgq.models.spec import builtin_spec
    from worker.images.preprocess import Target
    from worker.runtimes.keras_model import build_model
    from worker.runtimes.tensorflow_runtime import Classifier

    spec = builtin_spec(model_name)
    model, weights_id, spec = build_model(spec, f"random:{seed}")
    batch = model_input(paths, Target.of(spec), spec.preprocessing)
    feature = spec.feature_layer
    features = Classifier(model, weights_id, batch_size=len(paths), spec=spec).predict_with(
        batch, (feature,))[1][feature].reshape(len(paths), -1)
    centred = features - features.mean(axis=0)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    kernel = rng.normal(0, NOISE * float(norms.mean()) / features.shape[1], size=(features.shape[1], 1000))
    kernel[:, :len(paths)] = (centred / norms).T * SCALE / norms.mean()
    bias = np.zeros(1000)
    # The centring is folded into the bias: logits = (f - mean) . w, the same top-1 for either runtime.
    bias[:len(paths)] = -(features.mean(axis=0) @ kernel[:, :len(paths)])
    model.layers[-1].set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    labels = Classifier(model, weights_id, batch_size=len(paths), spec=spec).predict(batch).argmax(axis=1)
    assert list(labels) == list(range(len(paths))), f"pictures not told apart: {labels}"
    model.save_weights(out)
    return out
