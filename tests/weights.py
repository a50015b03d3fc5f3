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
# Families whose random network's signal dies on the way through it (MobileNetV3Large's pooled features are at
# most 6e-11 with random convolutions and untrained batch norms): their batch norms are set from the pictures.
NORMALISED = ("mobilenetv3large",)
NORM_PICTURES = 32  # pictures each batch norm's statistics are measured on
SCALE = 12.0  # logit of a picture's own class, over its centred features' norm: top-1 well above the rest
NOISE = 0.02  # the other columns' spread, relative to the feature scale: orders the rest of the top-5
NOISE_MAX = 0.02  # ...at most this share of SCALE in their logits' spread


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


def told_apart_weights(paths: list[Path], out: Path, seed: int = SEED,
                       model_name: str = "resnet50") -> tuple[Path, list[Path]]:
    """``image_dependent_weights``, leaving out the pictures the random network cannot tell from another one
    (their features so alike that rounding decides: 6 of the 250 shared photos for EfficientNetV2-S), each
    round refitted on the rest: the weights, and the pictures whose top-1 is their own class (in order)."""
    fitted = _Fitted.of(paths, seed, model_name)
    while confused := [i for i, label in enumerate(fitted.labels()) if label != i]:
        fitted.without(confused, seed)
    return fitted.saved(out), fitted.kept


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


def normalise(model, batch: np.ndarray) -> None:
    """Set each BatchNormalization layer's moving mean and variance to its input's statistics on ``batch``, as
    training would have them: every layer's output then has unit variance on such pictures, and the signal
    reaches the pooled features of a network whose random convolutions shrink it (or blow it up). One pass in
    training mode with a momentum of 0: each layer normalises by the batch's statistics and keeps them."""
    import keras

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    try:
        model(batch, training=True)
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum


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
        if model_name in NORMALISED:
            normalise(fitted.model, fitted.batch[:NORM_PICTURES])
        feature = fitted.spec.feature_layer
        features = fitted.classifier().predict_with(fitted.batch, (feature,))[1][feature].reshape(len(paths), -1)
        fitted.fit(features, seed)
        fitted.kept = list(paths)
        return fitted

    def fit(self, features: np.ndarray, seed: int) -> None:
        """The classifier's kernel and bias from the pictures' ``features``: picture i's along column i."""
        count = len(features)
        self.features, self.mean = features, features.mean(axis=0)
        self.centred = features - self.mean
        norms = np.linalg.norm(self.centred, axis=1, keepdims=True)
        rng = np.random.default_rng(seed)
        # The spread grows with the features' scale, squared in the logits: capped so that the other columns'
        # logits stay a small fraction of a picture's own (SCALE), whatever the scale (EfficientNetV2-S's random
        # features on photos are ~30 times ResNet50's on the generated pictures, where the cap does not bind).
        spread = min(NOISE * float(norms.mean()) / features.shape[1],
                     NOISE_MAX * SCALE / float(np.linalg.norm(features, axis=1).mean()))
        self.kernel = rng.normal(0, spread, size=(features.shape[1], 1000))
        self.kernel[:, :count] = (self.centred / norms).T * SCALE / norms.mean()
        self.bias = np.zeros(1000)
        # The centring is folded into the bias: logits = (f - mean) . w, the same top-1 for either runtime.
        self.bias[:count] = -(self.mean @ self.kernel[:, :count])

    def without(self, dropped: list[int], seed: int) -> None:
        """Refitted without the pictures at ``dropped``."""
        keep = [i for i in range(len(self.kept)) if i not in set(dropped)]
        self.batch, self.kept = self.batch[keep], [self.kept[i] for i in keep]
        self.fit(self.features[keep], seed)

    def classifier(self):
        from worker.runtimes.tensorflow_runtime import Classifier

        # In passes of at most 64: one pass over a thousand pictures would hold ~13 GB of ResNet50's activations.
        return Classifier(self.model, self.weights_id, batch_size=min(len(self.batch), 64), spec=self.spec)

    def labels(self) -> np.ndarray:
        """The model's top-1 for each picture, with the classifier set to ``kernel`` and ``bias``."""
        # The classifier is the last layer with weights: a Dense in most families, a 1x1 Conv2D ("Logits") in
        # MobileNetV3, whose kernel is (1, 1, features, classes); an activation may come after it.
        classifier = next(layer for layer in reversed(self.model.layers) if layer.get_weights())
        shape = classifier.get_weights()[0].shape
        classifier.set_weights([self.kernel.reshape(shape).astype(np.float32), self.bias.astype(np.float32)])
        return self.classifier().predict(self.batch).argmax(axis=1)

    def saved(self, out: Path) -> Path:
        labels = self.labels()
        assert list(labels) == list(range(len(self.batch))), f"pictures not told apart: {labels}"
        self.model.save_weights(out)
        return out
