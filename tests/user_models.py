"""Users' own models, built as a team would save them, with weights set by construction so that the label
follows the picture: what end-to-end tests of folder models need (random weights label every picture alike).

- ``brightness_folder``: the first CNN of every Keras lesson, 28x28x1 greyscale, Conv2D(32, 3x3) -> Conv2D ->
  Flatten -> Dense, whose two classes "dark" and "bright" follow a picture's mean brightness.
- ``resnet_head_folder``: a ResNet50 base (``random:SEED`` convolutions) with a new 3-class head, nested as
  Keras' transfer-learning guide nests it, whose head makes picture i (tests/weights.py) class i.

Both write a model folder (model.keras, labels.txt, imgq-model.toml) that `imgq worker --model FOLDER` serves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

BRIGHTNESS_LABELS = ("dark", "bright")
HEAD_LABELS = ("alpha", "beta", "gamma")


def grey_picture(path: Path, level: int, size: tuple[int, int] = (40, 32), seed: int = 0) -> Path:
    """A greyscale PNG around ``level`` (0..255) with some texture, so that no two pictures are alike."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(level + rng.normal(0, 12, size=(size[1], size[0])), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, "L").save(path)
    return path


def brightness_model(activation: str | None = "softmax"):
    """The greyscale CNN: each convolution averages its window, so the Dense layer sees local brightness and
    says "bright" above 128 and "dark" below, with a margin of 0.1 logit per grey level (``activation``
    None: the Dense layer gives those logits)."""
    import keras

    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, (3, 3), activation="relu", name="conv_a"),
        keras.layers.Conv2D(8, (3, 3), activation="relu", name="conv_b"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(len(BRIGHTNESS_LABELS), activation=activation, name="classes"),
    ])
    conv_a, conv_b, _, dense = model.layers
    conv_a.set_weights([np.full((3, 3, 1, 32), 1 / 9, np.float32), np.zeros(32, np.float32)])
    conv_b.set_weights([np.full((3, 3, 32, 8), 1 / (9 * 32), np.float32), np.zeros(8, np.float32)])
    features = 24 * 24 * 8
    kernel = np.zeros((features, 2), np.float32)
    kernel[:, 0], kernel[:, 1] = -0.1 / features, 0.1 / features  # logits: -+0.1 x mean brightness
    dense.set_weights([kernel, np.array([12.8, -12.8], np.float32)])  # ... centred on 128
    return model


def inverted_brightness_model():
    """The greyscale CNN with its classes' kernel and bias negated: "bright" below 128 and "dark" above, so
    that its labels tell it from ``brightness_model`` on the same pictures."""
    model = brightness_model()
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    dense.set_weights([-kernel, -bias])
    return model


def write_folder(folder: Path, model, labels: tuple[str, ...], manifest: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    (folder / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    if manifest:
        (folder / "imgq-model.toml").write_text(manifest)
    return folder


def brightness_folder(folder: Path) -> Path:
    """The greyscale CNN's folder (name "brightness", pixels 0..255 as they are: preprocessing none)."""
    return write_folder(folder, brightness_model(), BRIGHTNESS_LABELS, 'name = "brightness"\n')


def resnet_head_model(pictures: list[Path], seed: int = 11):
    """ResNet50 (no top, average pooling, ``random:seed``) with a Dense(3) softmax head: ``pictures[i]``
    (three of them) are class i, by the head's weights set from their pooled features as tests/weights.py
    sets ResNet50's own classifier."""
    import keras

    from tests.weights import NOISE, SCALE

    keras.utils.set_random_seed(seed)
    base = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg", input_shape=(224, 224, 3))
    inputs = keras.Input((224, 224, 3))
    head = keras.layers.Dense(len(HEAD_LABELS), activation="softmax", name="head")
    model = keras.Model(inputs, head(base(inputs, training=False)))
    features = np.asarray(base.predict(caffe_input(pictures), verbose=0))
    centred = features - features.mean(axis=0)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    kernel = (centred / norms).T * SCALE / norms.mean()
    kernel += np.random.default_rng(seed).normal(0, NOISE * float(norms.mean()) / features.shape[1], kernel.shape)
    bias = -(features.mean(axis=0) @ kernel)
    head.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    labels = model.predict(caffe_input(pictures), verbose=0).argmax(axis=1)
    assert list(labels) == list(range(len(pictures))), f"pictures not told apart: {labels}"
    return model


def caffe_input(pictures: list[Path]) -> np.ndarray:
    """Keras' recipe for a ResNet50 base: load_img(224x224) -> img_to_array -> resnet50.preprocess_input."""
    import keras

    arrays = [keras.utils.img_to_array(keras.utils.load_img(p, target_size=(224, 224))) for p in pictures]
    return keras.applications.resnet50.preprocess_input(np.stack(arrays))


def resnet_head_folder(folder: Path, pictures: list[Path], seed: int = 11) -> Path:
    """The ResNet50-head model's folder (name "three-heads", Keras' caffe preprocessing)."""
    return write_folder(folder, resnet_head_model(pictures, seed), HEAD_LABELS,
                        'name = "three-heads"\npreprocessing = "caffe"\n')


def nan_folder(folder: Path) -> Path:
    """A model whose outputs are NaN for every picture: its classifier's weights are NaN, as a training that
    diverged leaves them (the greyscale CNN's shapes, declared softmax)."""
    model = brightness_model()
    dense = model.get_layer("classes")
    kernel, bias = dense.get_weights()
    dense.set_weights([np.full_like(kernel, np.nan), bias])
    return write_folder(folder, model, BRIGHTNESS_LABELS, 'name = "diverged"\n')


def flat_nan_model():
    """A model that standardises each picture by its own spread before its classifier (a LayerNormalization
    over the whole picture with epsilon 0, a standard layer): a picture of one flat grey has no spread, so its
    outputs are 0/0 = NaN, while any picture with texture gets probabilities."""
    import keras

    image = keras.Input((28, 28, 1))
    spread = keras.layers.LayerNormalization(axis=[1, 2, 3], epsilon=0.0, center=False, scale=False,
                                             name="per_picture")(image)
    dense = keras.layers.Dense(len(BRIGHTNESS_LABELS), activation="softmax", name="classes")
    model = keras.Model(image, dense(keras.layers.Flatten(name="flatten")(spread)))
    dense.set_weights([np.random.default_rng(0).normal(0, 0.05, (28 * 28, 2)).astype(np.float32),
                       np.zeros(2, np.float32)])
    return model


def flat_nan_folder(folder: Path) -> Path:
    return write_folder(folder, flat_nan_model(), BRIGHTNESS_LABELS, 'name = "per-picture"\n')


def logits_folder(folder: Path, manifest: str = 'name = "logits"\n') -> Path:
    """The greyscale CNN without its softmax: its outputs are logits, while its folder declares nothing
    (outputs = "softmax", the default) unless ``manifest`` says otherwise."""
    return write_folder(folder, brightness_model(activation=None), BRIGHTNESS_LABELS, manifest)


def flat_picture(path: Path, level: int, size: tuple[int, int] = (40, 32)) -> Path:
    """A greyscale PNG of one flat ``level``: no texture at all."""
    Image.new("L", size, level).save(path)
    return path
