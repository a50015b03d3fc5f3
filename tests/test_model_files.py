"""The model and weights files a worker loads are read once (worker/runtimes/model_files.py; issue 25, item 12):
the bytes hashed, whose digest records carry and the OpenVINO cache is keyed by, are the bytes Keras loads. A
file replaced between the reading of its digest and its load is never served, nor converted, under that digest.

Each swap happens between two steps the worker takes one after the other (the folder read, then the model
loaded; the runtime built, then warmed up), here called one by one: no race, the same order every run."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat

import numpy as np
import pytest

from imgq.models.resolve import resolve
from tests import user_models
from worker.batches.labels import top_k
from worker.runtimes.model_files import pinned


def entries(cache) -> list[str]:
    return sorted(name for name in os.listdir(cache) if "." not in name) if os.path.isdir(cache) else []


def label_of_grey(classifier, level: int) -> str:
    probabilities = classifier.predict(classifier.model_input([np.full((28, 28, 1), level, np.uint8)]))
    return top_k(probabilities[0], 1, classifier.spec)[0].label


def test_the_copy_holds_the_bytes_hashed_whatever_happens_to_the_file_after(tmp_path):
    original = tmp_path / "model.keras"
    original.write_bytes(b"first version " * 1000)
    with open(original, "rb") as file, pinned(file, str(original)) as copy:
        original.write_bytes(b"second version")  # overwritten in place once read
        with open(copy.path, "rb") as pinned_file:
            assert pinned_file.read() == b"first version " * 1000
        assert copy.sha256 == hashlib.sha256(b"first version " * 1000).hexdigest()
        assert os.path.basename(copy.path) == "model.keras"  # Keras picks its reader by the suffix
        assert stat.S_IMODE(os.stat(os.path.dirname(copy.path)).st_mode) == 0o700  # this process's user's only
    assert not os.path.exists(os.path.dirname(copy.path))


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["tensorflow", "openvino"])
def test_a_model_file_replaced_after_its_digest_was_read_is_never_served_under_it(tmp_path, runtime):
    from worker.runtimes.keras_model import WeightsError
    from worker.runtimes.loading import load_classifier

    folder = user_models.brightness_folder(tmp_path / "brightness")
    spec = resolve(str(folder))  # a worker reads its folder first: records and the cache are keyed by spec.id
    replacement = user_models.write_folder(tmp_path / "new", user_models.inverted_brightness_model(),
                                           user_models.BRIGHTNESS_LABELS)
    shutil.copyfile(replacement / "model.keras", folder / "model.keras")  # a deploy, while the worker starts
    cache = tmp_path / "cache"
    with pytest.raises(WeightsError, match="changed since this worker read it"):
        load_classifier("imagenet", 2, runtime=runtime, model=spec, cache_dir=str(cache))
    assert entries(cache) == []  # nothing converted under the first digest
    served = load_classifier("imagenet", 2, runtime=runtime, model=str(folder), cache_dir=str(cache))
    assert served.model_id == resolve(str(folder)).id != spec.id  # the next start: the new file, its own id
    assert label_of_grey(served, 200) == "dark"  # and its own answers


@pytest.mark.slow
def test_a_weights_file_replaced_after_it_was_hashed_is_never_converted_under_its_digest(tmp_path):
    from worker.runtimes.keras_model import WeightsError
    from worker.runtimes.loading import load_classifier
    from worker.runtimes.openvino_runtime import load_openvino

    folder = str(user_models.brightness_folder(tmp_path / "brightness"))
    weights = tmp_path / "brightness.weights.h5"
    user_models.brightness_model().save_weights(weights)
    cache = tmp_path / "cache"
    openvino = load_openvino(str(weights), 2, "fp32", str(cache), spec=folder)  # hashes the file: its weights id
    first = openvino.weights_id
    user_models.inverted_brightness_model().save_weights(weights)  # replaced before the conversion loads it
    with pytest.raises(WeightsError, match="changed since this worker read it"):
        openvino.warm_up()
    assert entries(cache) == []
    served = load_classifier(str(weights), 2, runtime="openvino", model=folder, cache_dir=str(cache))
    assert served.weights_id != first and label_of_grey(served, 200) == "dark"
