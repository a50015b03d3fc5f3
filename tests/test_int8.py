"""IMGQ_PRECISION=int8: the counterpart of every runtime parity test (tests/test_runtime_parity.py), on the same
pictures and image-dependent weights (tests/weights.py), plus what only INT8 has: calibration on a folder or on
the first images, the agreement measured and enforced, the cache keyed by the calibration photos."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from imgq.results.store import ResultStore, delete_namespace
from tests import weights as test_weights
from tests.conftest import PARITY_PICTURES as PICTURES

BATCH = 5

pytestmark = pytest.mark.slow


def _int8(parity, cache_dir, **options):
    from worker.runtimes.int8_serving import Int8Options
    from worker.runtimes.loading import load_classifier

    folder = str(parity[0][0].parent)
    return load_classifier(parity[1], BATCH, "int8", "openvino", cache_dir=str(cache_dir),
                           int8=Int8Options(**{"calibration": folder, **options}))


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("int8-cache")


@pytest.fixture(scope="module")
def int8(parity, int8_cache):
    return _int8(parity, int8_cache)


@pytest.fixture(scope="module")
def tensorflow(parity):
    from worker.runtimes.loading import load_classifier

    return load_classifier(parity[1], BATCH, "fp32", "tensorflow")


def test_int8_gives_tensorflows_top1_and_its_features_from_the_same_pass(parity, tensorflow, int8):
    """The counterpart of test_fp32_openvino_gives_tensorflows_top5_and_probabilities."""
    assert int8.precision == "int8" and int8.takes_pixels and int8.runtime.startswith("openvino 20")
    tf_probabilities, tf_activations = tensorflow.predict_with(parity[2], ("avg_pool",))
    probabilities, activations = int8.predict_with(int8.model_input(list(parity[3])), ("avg_pool",))
    assert int8.last_precision == "int8"  # the pooled features come from the INT8 pass
    assert list(probabilities.argmax(axis=1)) == list(tf_probabilities.argmax(axis=1)) == list(range(PICTURES))
    assert activations["avg_pool"].shape == tf_activations["avg_pool"].shape
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)


def test_a_dumped_layer_runs_on_fp32_and_its_records_say_so(parity, int8):
    int8.predict_with(int8.model_input(list(parity[3][:2])), ("conv5_block3_out",))
    assert int8.last_precision == "fp32" and int8.precision == "int8"
    int8.predict(int8.model_input(list(parity[3][:2])))
    assert int8.last_precision == "int8"


@pytest.mark.parametrize(("model", "expected"), [
    ("resnet50", {"preset": "performance", "fast_bias_correction": True}),
    ("resnet50v2", {"preset": "performance", "fast_bias_correction": True}),
    ("efficientnetv2b0", {"preset": "mixed", "fast_bias_correction": True}),
    ("efficientnetv2s", {"preset": "mixed", "fast_bias_correction": True}),
    ("mobilenetv3large", {"preset": "mixed", "fast_bias_correction": False}),
    ("convnexttiny", {"preset": "mixed", "fast_bias_correction": True, "model_type": "transformer"}),
])
def test_nncf_settings_follow_each_family(model, expected):
    """worker/runtimes/int8.py's docstring gives each reason; ConvNeXt's transformer scheme took its agreement
    from 95.1% to 100% (BENCHMARKS.md). The settings key the cache: only ConvNeXt's have a model_type."""
    from imgq.models.spec import builtin_spec
    from worker.runtimes.int8 import quantization_settings

    assert quantization_settings(builtin_spec(model)) == {**expected, "target_device": "CPU"}


def test_a_folder_models_nncf_settings_are_the_mixed_preset(tmp_path):
    from imgq.models.resolve import resolve
    from tests import user_models
    from worker.runtimes.int8 import quantization_settings

    spec = resolve(str(user_models.brightness_folder(tmp_path / "brightness")))
    assert quantization_settings(spec) == {"preset": "mixed", "fast_bias_correction": True, "target_device": "CPU"}


def test_int8_agreement_with_fp32_is_measured_recorded_and_printed(int8):
    """The counterpart of test_bf16_agreement_with_fp32_tensorflow_is_measured."""
    assert int8.agreement.top1 == 1.0 and int8.agreement.top5_overlap >= 0.6
    assert int8.agreement.photos == PICTURES // 4  # every 4th picture held out, never calibrated on
    about = int8.int8_entry().about()
    assert about["agreement"]["top1"] == 1.0 and about["nncf"] and about["calibration"] == int8.calibration_digest
    assert about["quantization"] == {"preset": "performance", "fast_bias_correction": True, "target_device": "CPU"}
    assert "top-1 agrees with fp32 on 100.0% of 6 held-out photos" in int8.int8_note


def test_the_quantization_is_cached_by_the_calibration_photos(parity, int8, int8_cache, tmp_path):
    """The counterpart of test_the_conversion_is_cached_by_weights_and_layers."""
    again = _int8(parity, int8_cache)
    assert again.quantize_seconds == 0 and "(cached)" in again.int8_note  # no NNCF run
    np.testing.assert_array_equal(again.predict(parity[3][:4]), int8.predict(parity[3][:4]))
    fewer = _int8(parity, int8_cache, photos=16)  # other photos: another entry
    assert fewer.quantize_seconds > 0 and fewer.int8_entry().folder != int8.int8_entry().folder
    assert len([n for n in os.listdir(int8_cache) if "-int8-" in n]) == 2


def test_a_damaged_int8_entry_is_quantized_again(parity, int8, int8_cache, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(int8_cache, cache)
    entry = cache / os.path.basename(int8.int8_entry().folder)
    (entry / "model.bin").write_bytes(b"\0" * (entry / "model.bin").stat().st_size)
    again = _int8(parity, cache)
    assert again.quantize_seconds > 0 and again.agreement.top1 == 1.0


def test_an_int8_model_that_cannot_compile_says_so_in_one_line(parity, int8_cache):
    """The counterpart of test_a_model_openvino_cannot_compile_names_the_tensorflow_runtime."""
    from worker.runtimes.calibration import Calibration
    from worker.runtimes.int8 import Int8Classifier
    from worker.runtimes.openvino_runtime import OpenVINOError

    classifier = Int8Classifier(parity[1], BATCH, cache_dir=str(int8_cache), device="NO_SUCH_DEVICE",
                                calibration=Calibration.of(list(parity[3]), "the parity pictures"))
    with pytest.raises(OpenVINOError) as info:
        classifier.warm_up()
    assert "\n" not in str(info.value)


def test_int8_whose_labels_moved_serves_fp32_and_says_why(tmp_path):
    """Near-tie weights (tests/weights.py): each picture's top-1 wins by 1e-4, so quantization flips some."""
    from worker.runtimes.int8_serving import Int8Options
    from worker.runtimes.loading import load_classifier

    paths = test_weights.write_pictures(tmp_path / "pictures", 48)
    weights = test_weights.near_tie_weights(paths, tmp_path / "near-tie.weights.h5")
    classifier = load_classifier(str(weights), 8, "int8", "openvino", cache_dir=str(tmp_path / "cache"),
                                 int8=Int8Options(calibration=str(tmp_path / "pictures")))
    assert classifier.agreement.top1 < 0.99 and classifier.agreement.photos == 12
    assert classifier.precision == "fp32" and classifier.refusal
    assert "IMGQ_INT8_MIN_AGREEMENT=0.99" in classifier.int8_note and "fp32" in classifier.int8_note
    classifier.predict(classifier.model_input(list(test_weights.decoded(paths[:2]))))
    assert classifier.last_precision == "fp32"
    # The same photos again: the refusal is read from the cache, not quantized again.
    again = load_classifier(str(weights), 8, "int8", "openvino", cache_dir=str(tmp_path / "cache"),
                            int8=Int8Options(calibration=str(tmp_path / "pictures")))
    assert again.quantize_seconds == 0 and again.precision == "fp32"
    # A lower bar, chosen by the operator, takes it.
    lower = load_classifier(str(weights), 8, "int8", "openvino", cache_dir=str(tmp_path / "cache"),
                            int8=Int8Options(calibration=str(tmp_path / "pictures"), min_agreement=0.0))
    assert lower.precision == "int8" and not lower.refusal


def test_without_a_folder_int8_calibrates_on_the_first_images_then_switches(parity, tmp_path):
    from worker.runtimes.int8_serving import CalibratingOnFirstImages, Int8Options
    from worker.runtimes.loading import load_classifier

    options = Int8Options(photos=16)
    runtime = load_classifier(parity[1], BATCH, "int8", "openvino", cache_dir=str(tmp_path), int8=options)
    assert isinstance(runtime, CalibratingOnFirstImages) and runtime.precision == "fp32"
    pixels = runtime.model_input(list(parity[3]))
    first = runtime.predict(pixels[:16])  # the 16 images it calibrates on, classified in fp32
    assert runtime.last_precision == "fp32" and list(first.argmax(axis=1)) == list(range(16))
    runtime._thread.join(600)
    after = runtime.predict(pixels)
    assert runtime.last_precision == "int8" and runtime.precision == "int8"
    assert list(after.argmax(axis=1)) == list(range(PICTURES))
    assert "since calibrating on the first images" in runtime.int8_note
    # A later start remembers: INT8 from the first batch, nothing quantized.
    later = load_classifier(parity[1], BATCH, "int8", "openvino", cache_dir=str(tmp_path), int8=options)
    later.predict(pixels[:3])
    assert later.precision == later.last_precision == "int8" and "earlier start" in later.int8_note


def test_a_worker_in_int8_labels_the_pictures_and_says_int8(parity, redis_url, tmp_path):
    """The counterpart of test_workers_on_either_runtime_give_the_same_labels_and_name_their_runtime."""
    from producer.cli import cli
    from producer.local.workers import LocalWorker
    from tests.conftest import make_settings

    folder = str(parity[0][0].parent)
    settings = make_settings(redis_url, tmp_path, weights=parity[1], precision="int8", calibration=folder)
    worker = LocalWorker(settings)
    worker.start()
    try:
        worker.wait_ready(ResultStore.from_settings(settings), timeout=600)
        result = CliRunner().invoke(cli, ["submit", folder, "--wait"], env=settings.as_env(), catch_exceptions=False)
        records = sorted(ResultStore.from_settings(settings).iter_results(result.stdout.strip()),
                         key=lambda r: r["path"])
        assert [r["status"] for r in records] == ["ok"] * PICTURES
        assert {r["precision"] for r in records} == {"int8"}
        assert [r["top_k"][0]["wnid"] for r in records] == [_wnid(i) for i in range(PICTURES)]
        status = CliRunner().invoke(cli, ["status", "--workers"], env=settings.as_env())
        assert f"int8 on {records[0]['runtime']}" in status.stdout
        assert "top-1 agrees with fp32 on 100.0% of 6 held-out photos" in worker.log_path.read_text()
    finally:
        worker.stop()
        delete_namespace(redis_url, settings.namespace)


def _wnid(index: int) -> str:
    from worker.batches.labels import class_index

    return class_index()[index][0]


def test_settings_of_int8_at_their_edges():
    from imgq.settings import Settings

    assert Settings.from_env({"IMGQ_PRECISION": "int8"}).precision == "int8"
    with pytest.raises(ValueError, match="runs on OpenVINO"):
        Settings.from_env({"IMGQ_PRECISION": "int8", "IMGQ_RUNTIME": "tensorflow"})
    for raw in ("nan", "inf", "-0.1", "1.5", "x", ""):
        if raw:
            with pytest.raises(ValueError, match="IMGQ_INT8_MIN_AGREEMENT"):
                Settings.from_env({"IMGQ_INT8_MIN_AGREEMENT": raw})
    for raw in ("0", "7", "-1", "10001", "1e9"):
        with pytest.raises(ValueError, match="IMGQ_CALIBRATION_IMAGES"):
            Settings.from_env({"IMGQ_CALIBRATION_IMAGES": raw})
    assert Settings.from_env({"IMGQ_CALIBRATION_IMAGES": "8"}).calibration_images == 8
    assert json.loads(json.dumps(Settings().as_env()))["IMGQ_INT8_MIN_AGREEMENT"] == "0.99"
