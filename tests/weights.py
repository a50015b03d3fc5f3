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
    fitted = _Fitted.of(paths, seed, model_name)
    return fitted.saved(out)


def near_tie_weights(paths: list[Path], out: Path, seed: int = SEED, margin: float = 1e-4) -> Path:
    """Like ``image_dependent_weights`` (ResNet50), but each picture i has a rival class ``len(paths) + i``
    whose logit is ``margin`` under class i's for that picture, along a direction of its own: the top-1 is
    still class i in fp32, but a perturbation of the features (quantization) flips about half of them. What a
    test needs to show that a runtime whose labels moved is refused. Needs ``2 * len(paths) <= 1000``."""
    fitted = _Fitted.of(paths, seed, "resnet50")
    rng = np.random.default_rng(seed + 1)
    for i, centred in enumerate(fitted.centred):
        rival = len(paths) + i
        direction = rng.normal(size=fitted.kernel.shape[0])
        direction -= (direction @ centred) / (centred @ centred) * centred  # on picture i: no change
        direction *= np.linalg.norm(fitted.kernel[:, i]) / np.linalg.norm(direction)
        fitted.kernel[:, rival] = fitted.kernel[:, i] + direction
        fitted.bias[rival] = -(fitted.mean @ fitted.kernel[:, rival]) - margin
    return fitted.saved(out)


class _Fitted:
    """A model whose classifier (its last layer with weights) makes picture i's top-1 class i: ``kernel`` and
    ``bias`` may be changed before ``saved`` writes them and checks the labels."""

    @classmethod
    def of(cls, paths: list[Path], seed: int, model_name: str) -> _Fitted:
        from imgq.models.spec import builtin_spec
        from worker.images.preprocess import Target
        from worker.runtimes.keras_model import build_model

        fitted = cls()
        fitted.spec = builtin_spec(model_name)
        fitted.model, fitted.weights_id, fitted.spec = build_model(fitted.spec, f"random:{seed}")
        fitted.batch = model_input(paths, Target.of(fitted.spec), fitted.spec.preprocessing)
        feature = fitted.spec.feature_layer
        features = fitted.classifier().predict_with(fitted.batch, (feature,))[1][feature].reshape(len(paths), -1)
        fitted.mean = features.mean(axis=0)
        fitted.centred = features - fitted.mean
        norms = np.linalg.norm(fitted.centred, axis=1, keepdims=True)
        rng = np.random.default_rng(seed)
        fitted.kernel = rng.normal(0, NOISE * float(norms.mean()) / features.shape[1], size=(features.shape[1], 1000))
        fitted.kernel[:, :len(paths)] = (fitted.centred / norms).T * SCALE / norms.mean()
        fitted.bias = np.zeros(1000)
        # The centring is folded into the bias: logits = (f - mean) . w, the same top-1 for either runtime.
        fitted.bias[:len(paths)] = -(fitted.mean @ fitted.kernel[:, :len(paths)])
        return fitted

    def classifier(self):
        from worker.runtimes.tensorflow_runtime import Classifier

        # In passes of at most 64: one pass over a thousand pictures would hold ~13 GB of ResNet50's activations.
        return Classifier(self.model, self.weights_id, batch_size=min(len(self.batch), 64), spec=self.spec)

    def saved(self, out: Path) -> Path:
        # The classifier is the last layer with weights: a Dense in most families, a 1x1 Conv2D ("Logits") in
        # MobileNetV3, whose kernel is (1, 1, features, classes); an activation may come after it.
        classifier = next(layer for layer in reversed(self.model.layers) if layer.get_weights())
        shape = classifier.get_weights()[0].shape
        classifier.set_weights([self.kernel.reshape(shape).astype(np.float32), self.bias.astype(np.float32)])
        labels = self.classifier().predict(self.batch).argmax(axis=1)
        assert list(labels) == list(range(len(self.batch))), f"pictures not told apart: {labels}"
        self.model.save_weights(out)
        return out
