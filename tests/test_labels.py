"""worker.batches.labels: the vendored ImageNet class index is Keras' own, and top_k decodes as decode_predictions
does."""

from __future__ import annotations

import hashlib
import re
import shutil
from importlib import resources

import keras
import numpy as np
import pytest
from keras.src.applications import imagenet_utils
from keras.src.backend import config as keras_config
from keras.src.utils import file_utils

from imgq.labels.classes import class_index
from worker.batches.labels import top_k

VENDORED = resources.files("imgq").joinpath("imagenet_class_index.json")
KERAS_MD5 = "c2c37ea517e94d9795004a39431a14cb"  # the file_hash decode_predictions passes to get_file


def test_class_index_is_the_thousand_imagenet_classes():
    names = class_index()
    assert len(names) == 1000
    assert names[0] == ("n01440764", "tench")
    assert names[999] == ("n15075141", "toilet_tissue")
    assert len({wnid for wnid, _ in names}) == 1000  # labels repeat in ImageNet ("crane"), wnids never do


def test_vendored_file_is_the_one_keras_checks():
    assert hashlib.md5(VENDORED.read_bytes()).hexdigest() == KERAS_MD5


@pytest.fixture
def decode_predictions(tmp_path, monkeypatch):
    """Keras' decode_predictions reading our vendored file from a private Keras home; the network is refused."""
    # Keras reads KERAS_HOME once, when it is imported, into config._KERAS_DIR (what get_file's cache_dir defaults
    # to): setting the variable now would be too late, so point the value it was read into at tmp_path instead.
    (tmp_path / "models").mkdir()  # decode_predictions' cache_subdir
    shutil.copy(VENDORED, tmp_path / "models" / "imagenet_class_index.json")
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    monkeypatch.setattr(imagenet_utils, "CLASS_INDEX", None)  # its cache of the file, from any earlier caller

    def no_network(url, *args, **kwargs):
        raise AssertionError(f"Keras tried to download {url}: the file in its cache was not accepted")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    return keras.applications.resnet50.decode_predictions


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max())
    return (exp / exp.sum()).astype(np.float32)


def _with_tie_at_the_top(seed: int) -> np.ndarray:
    probabilities = _softmax(np.random.default_rng(seed).normal(size=1000))
    probabilities[[3, 500, 999]] = probabilities.max()  # three classes share first place
    return probabilities


_rng = np.random.default_rng(20240601)
PROBABILITIES = {
    "softmax": _softmax(_rng.normal(scale=3, size=1000)),
    "dirichlet": _rng.dirichlet(np.full(1000, 0.1)).astype(np.float32),
    "one-hot": np.eye(1000, dtype=np.float32)[417],
    "uniform": np.full(1000, 1 / 1000, np.float32),  # every class tied
    "few-values": (_rng.integers(0, 4, size=1000) / 1500).astype(np.float32),  # ties straddle every k
    "tie-at-top": _with_tie_at_the_top(7),
}


@pytest.mark.parametrize("k", [1, 5, 10])
@pytest.mark.parametrize("name", PROBABILITIES)
def test_top_k_equals_keras_decode_predictions(decode_predictions, name, k):
    probabilities = PROBABILITIES[name]
    (theirs,) = decode_predictions(probabilities[np.newaxis], top=k)
    expected = [{"wnid": wnid, "label": label, "score": float(score)} for wnid, label, score in theirs]
    assert len(expected) == k  # a real answer from Keras, not an empty list that anything would equal
    ours = [label.to_dict() for label in top_k(probabilities, k)]
    assert ours == expected
    assert all(type(entry["score"]) is float for entry in ours)  # JSON-ready, not numpy's float32


def test_top_k_reads_a_row_of_a_batch():
    # The worker passes rows of the model's (batch, 1000) output: views, not fresh arrays.
    batch = np.stack([PROBABILITIES["softmax"], PROBABILITIES["one-hot"]])
    assert [label.to_dict() for label in top_k(batch[1], 1)] == [{"wnid": "n02782093", "label": "balloon",
                                                                    "score": 1.0}]


@pytest.mark.parametrize("shape", [(1, 1000), (999,), (1001,), (1000, 1), ()])
def test_top_k_rejects_a_wrong_shape(shape):
    with pytest.raises(ValueError, match=re.escape(f"Expected 1000 class probabilities. Received shape: {shape}")):
        top_k(np.zeros(shape, np.float32), 5)
