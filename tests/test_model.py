"""ResNet50 with each kind of weights, and the compiled fixed-shape forward pass."""

import numpy as np
import pytest

from worker.runtimes.keras_model import WeightsError, build_resnet50
from worker.runtimes.loading import load_classifier
from worker.runtimes.tensorflow_runtime import Classifier

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def random_model():
    return build_resnet50("random:7")


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).uniform(-120, 130, size=(5, 224, 224, 3)).astype(np.float32)


def test_random_weights_are_seeded_and_say_they_are_random(random_model, batch):
    model, weights_id = random_model
    again, _ = build_resnet50("random:7")
    other, _ = build_resnet50("random:8")
    assert weights_id == "random:7 (untrained: labels are meaningless)"
    assert np.array_equal(model(batch[:2]).numpy(), again(batch[:2]).numpy())
    assert not np.allclose(model(batch[:2]).numpy(), other(batch[:2]).numpy())


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_local_files_load_the_same_model(random_model, batch, tmp_path, suffix):
    model, _ = random_model
    path = tmp_path / f"mine{suffix}"
    if suffix == ".keras":
        model.save(path)
    else:
        model.save_weights(path)
    loaded, weights_id = build_resnet50(str(path))
    assert weights_id.startswith(f"file:mine{suffix}:sha256:") and len(weights_id.rsplit(":", 1)[1]) == 12
    np.testing.assert_allclose(loaded(batch[:2]).numpy(), model(batch[:2]).numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("spec", "message"), [
    ("weights.bin", "Expected imagenet, random"),
    ("/no/such/file.h5", "Weights file not found"),
    ("random:x", "integer seed"),
])
def test_bad_weights_specs_say_what_is_expected(spec, message):
    with pytest.raises(WeightsError, match=message):
        build_resnet50(spec)


def test_unreadable_weights_file(tmp_path):
    path = tmp_path / "broken.weights.h5"
    path.write_bytes(b"not hdf5")
    with pytest.raises(WeightsError, match="Could not load weights from"):
        build_resnet50(str(path))


def test_imagenet_download_failure_names_the_local_file_option(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached weights to fall back on
    try:
        build_resnet50("imagenet")
    except WeightsError as exc:
        assert "IMGQ_WEIGHTS=/path/to/resnet50_weights_tf_dim_ordering_tf_kernels.h5" in str(exc)
        assert "\n" not in str(exc)
    else:
        pytest.skip("this machine can download the ImageNet weights")


def test_short_and_long_batches_match_full_ones(random_model, batch):
    model, weights_id = random_model
    classifier = Classifier(model, weights_id, batch_size=2)
    full = model(batch, training=False).numpy()
    out = classifier.predict(batch)  # 5 images in slices of 2: 2 + 2 + 1
    assert out.shape == (5, 1000)
    np.testing.assert_allclose(out, full, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-5)
    assert classifier.predict(batch[:0]).shape == (0, 1000)


def test_load_classifier_warms_up_and_times_itself():
    classifier = load_classifier("random", batch_size=1)
    assert classifier.load_seconds > 0 and classifier.weights_id.startswith("random:0")
