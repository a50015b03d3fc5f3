"""Users' model folders and other built-ins in a worker: loading, the checks made at start (one line a
problem), labels that follow the picture, and OpenVINO (uint8 input, preprocessing in the graph) against
TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from imgq.models.resolve import resolve
from tests import user_models
from tests import weights as test_weights
from worker.batches.labels import top_k

pytestmark = pytest.mark.slow

LEVELS = (10, 60, 100, 140, 190, 250)


@pytest.fixture(scope="module")
def brightness(tmp_path_factory):
    """``(folder, grey pictures, expected labels)``."""
    folder = tmp_path_factory.mktemp("models")
    model = user_models.brightness_folder(folder / "brightness")
    pictures = [user_models.grey_picture(folder / f"grey-{level}.png", level, seed=level) for level in LEVELS]
    return model, pictures, ["dark" if level < 128 else "bright" for level in LEVELS]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """``(folder, pictures)``: the ResNet50 base with a 3-class head; picture i is class i."""
    folder = tmp_path_factory.mktemp("head")
    pictures = test_weights.write_pictures(folder / "pictures", 3)
    return user_models.resnet_head_folder(folder / "three-heads", pictures), pictures


def both_runtimes(model, weights, cache_dir, batch_size=4):
    from worker.runtimes.loading import load_classifier

    return (load_classifier(weights, batch_size, runtime="tensorflow", model=model),
            load_classifier(weights, batch_size, runtime="openvino", model=model, cache_dir=str(cache_dir)))


def labels_of(classifier, pictures) -> tuple[np.ndarray, list[str]]:
    probabilities = classifier.predict(classifier.model_input(list(test_weights.decoded(pictures, classifier.target))))
    return probabilities, [top_k(p, 1, classifier.spec)[0].label for p in probabilities]


def test_the_greyscale_cnn_follows_brightness_on_both_runtimes(brightness, tmp_path):
    folder, pictures, expected = brightness
    tensorflow, openvino = both_runtimes(str(folder), "imagenet", tmp_path)
    assert tensorflow.target.shape == openvino.target.shape == (28, 28, 1)
    assert openvino.model_input(list(test_weights.decoded(pictures, openvino.target))).dtype == np.uint8
    tf_probabilities, tf_labels = labels_of(tensorflow, pictures)
    ov_probabilities, ov_labels = labels_of(openvino, pictures)
    assert tf_labels == ov_labels == expected
    np.testing.assert_allclose(ov_probabilities, tf_probabilities, rtol=0, atol=1e-4)
    assert tensorflow.model_id == openvino.model_id == resolve(str(folder)).id
    assert tensorflow.model_id.startswith("brightness@sha256:")
    label = top_k(tf_probabilities[0], 5, tensorflow.spec)
    assert [t.to_dict()["label"] for t in label] == ["dark", "bright"]  # k is capped by the classes
    assert set(label[0].to_dict()) == {"label", "index", "score"} and label[0].to_dict()["index"] == 0


def test_a_resnet50_base_with_a_new_head_on_both_runtimes(head, tmp_path):
    folder, pictures = head
    tensorflow, openvino = both_runtimes(str(folder), "imagenet", tmp_path)
    assert tensorflow.spec.preprocessing == "caffe" and tensorflow.spec.feature_layer == "resnet50"
    tf_probabilities, tf_labels = labels_of(tensorflow, pictures)
    ov_probabilities, ov_labels = labels_of(openvino, pictures)
    assert tf_labels == ov_labels == list(user_models.HEAD_LABELS)
    np.testing.assert_allclose(ov_probabilities, tf_probabilities, rtol=0, atol=1e-4)
    batch = tensorflow.model_input(list(test_weights.decoded(pictures)))
    features = tensorflow.predict_with(batch, ("resnet50",))[1]["resnet50"]  # the pooled vector: embeddings
    assert features.shape == (3, 2048)


def test_efficientnetv2b0_with_image_dependent_weights_on_both_runtimes(tmp_path):
    pictures = test_weights.write_pictures(tmp_path / "pictures", 8)
    weights = str(test_weights.image_dependent_weights(pictures, tmp_path / "e.weights.h5",
                                                       model_name="efficientnetv2b0"))
    tensorflow, openvino = both_runtimes("efficientnetv2b0", weights, tmp_path / "cache")
    tf_probabilities = tensorflow.predict(tensorflow.model_input(list(test_weights.decoded(pictures))))
    ov_probabilities = openvino.predict(openvino.model_input(list(test_weights.decoded(pictures))))
    assert list(tf_probabilities.argmax(axis=1)) == list(range(8))
    top5 = [np.argsort(-p, axis=1)[:, :5] for p in (tf_probabilities, ov_probabilities)]
    assert np.array_equal(*top5)
    np.testing.assert_allclose(ov_probabilities, tf_probabilities, rtol=0, atol=1e-4)
    assert top_k(tf_probabilities[0], 1, tensorflow.spec)[0].to_dict().keys() == {"wnid", "label", "score"}


def test_efficientnetv2b0_random_weights_say_so(tmp_path):
    from worker.runtimes.loading import load_classifier

    classifier = load_classifier("random:1", 2, runtime="tensorflow", model="efficientnetv2b0")
    assert classifier.weights_id.startswith("random:1 (untrained") and classifier.target.shape == (224, 224, 3)


def build_folder(folder, model, labels=("a", "b"), manifest=""):
    return str(user_models.write_folder(folder, model, labels, manifest))


def problems(folder) -> list[str]:
    from worker.runtimes.keras_model import WeightsError
    from worker.runtimes.loading import load_classifier

    with pytest.raises(WeightsError) as info:
        load_classifier("imagenet", 2, runtime="tensorflow", model=folder)
    return str(info.value).splitlines()


def test_every_problem_of_a_model_is_one_line_naming_the_file_and_the_fix(tmp_path):
    import keras

    image = keras.Input((8, 8, 3))
    dense = keras.layers.Dense(3)(keras.layers.Flatten()(image))
    lines = problems(build_folder(tmp_path / "count", keras.Model(image, dense)))
    assert len(lines) == 1 and "labels.txt: 2 class names for 3 outputs" in lines[0]

    other = keras.Input((4,))
    two = keras.Model([image, other], [dense, keras.layers.Dense(2)(other)])
    lines = problems(build_folder(tmp_path / "two", two))
    assert any("2 inputs" in line for line in lines) and any("2 outputs" in line for line in lines)

    vector = keras.Input((16,))
    lines = problems(build_folder(tmp_path / "vector", keras.Model(vector, keras.layers.Dense(2)(vector))))
    assert len(lines) == 1 and "is not an image" in lines[0] and "model.keras" in lines[0]

    grey = keras.Input((8, 8, 1))
    model = keras.Model(grey, keras.layers.Dense(2)(keras.layers.Flatten()(grey)))
    lines = problems(build_folder(tmp_path / "grey", model, manifest='preprocessing = "caffe"\n'))
    assert len(lines) == 1 and "needs 3 channels" in lines[0]

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.keras").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: no config.json
    (broken / "labels.txt").write_text("a\n")
    lines = problems(str(broken))
    assert len(lines) == 1 and "model.keras" in lines[0]


def test_a_lambda_layer_is_refused_by_safe_mode(tmp_path):
    import keras

    image = keras.Input((8, 8, 3))
    out = keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Lambda(lambda x: x * 2)(image)))
    lines = problems(build_folder(tmp_path / "lambda", keras.Model(image, out)))
    assert len(lines) == 1 and "Keras cannot load it" in lines[0] and "Lambda" in lines[0]


def test_logits_get_a_softmax(tmp_path):
    import keras

    from worker.runtimes.loading import load_classifier

    image = keras.Input((4, 4, 1))
    logits = keras.layers.Dense(2, name="logits")(keras.layers.Flatten(name="flatten")(image))
    folder = build_folder(tmp_path / "logits", keras.Model(image, logits), manifest='outputs = "logits"\n')
    classifier = load_classifier("imagenet", 2, runtime="tensorflow", model=folder)
    probabilities = classifier.predict(classifier.model_input([np.full((4, 4, 1), 200, np.uint8)]))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-6)
    assert classifier.spec.feature_layer == "flatten"


def test_a_model_whose_outputs_are_not_probabilities_is_refused_in_one_line(tmp_path):
    """Checked on test pictures once warm, on every runtime (the worker's refusal on OpenVINO:
    tests/reliability/test_bad_models.py): NaN outputs, and logits from a folder that declares softmax."""
    from worker.runtimes.loading import load_classifier

    lines = problems(str(user_models.nan_folder(tmp_path / "diverged")))
    assert len(lines) == 1 and "model.keras" in lines[0] and "not finite numbers (NaN or infinite)" in lines[0]
    lines = problems(str(user_models.logits_folder(tmp_path / "logits")))
    assert len(lines) == 1 and "sum to" in lines[0]
    assert f'set outputs = "logits" in {tmp_path / "logits" / "imgq-model.toml"}' in lines[0]
    declared = user_models.logits_folder(tmp_path / "declared", 'name = "logits"\noutputs = "logits"\n')
    classifier = load_classifier("imagenet", 2, runtime="tensorflow", model=str(declared))
    probabilities = classifier.predict(classifier.model_input([np.full((28, 28, 1), 200, np.uint8)]))
    assert top_k(probabilities[0], 1, classifier.spec)[0].label == "bright"


@pytest.mark.parametrize("model_file", ["model.keras", "model.h5"])
def test_the_producer_reads_the_output_count_keras_saved(tmp_path, model_file):
    """What Keras writes (functional with a softmax layer, Sequential with an Activation, a nested model):
    read without Keras, a labels.txt of the wrong count is refused as the worker refuses it, before anything is
    queued (imgq/models/config.py)."""
    import keras

    from imgq.models.folder import read_model_folder
    from imgq.models.spec import ModelError

    image = keras.Input((8, 8, 3))
    flat = keras.layers.Flatten()(image)
    inner = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(3)], name="inner")
    models = {"functional": keras.Model(image, keras.layers.Softmax()(keras.layers.Dense(3)(flat))),
              "sequential": keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(3),
                                              keras.layers.Activation("softmax")]),
              "nested": keras.Model(image, inner(image))}
    for kind, model in models.items():
        folder = tmp_path / kind
        folder.mkdir()
        model.save(folder / model_file)
        (folder / "labels.txt").write_text("a\nb\n")
        with pytest.raises(ModelError) as info:
            read_model_folder(str(folder))
        assert str(info.value).startswith(f"{folder / 'labels.txt'}: 2 class names for 3 outputs"), kind
        (folder / "labels.txt").write_text("a\nb\nc\n")
        assert read_model_folder(str(folder)).labels == ("a", "b", "c")
