"""OpenVINO against TensorFlow on weights whose labels depend on the image (tests/weights.py): the same
top-5 and probabilities within 1e-4 in fp32, bf16's agreement measured, and a real worker on each runtime."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from imgq.results.store import ResultStore, delete_namespace
from tests.conftest import PARITY_PICTURES as PICTURES

BATCH = 5  # the pictures run in slices of 5, 5, 5, 5, 4: a short last slice, never padded


@pytest.fixture(scope="module")
def tensorflow(parity):
    from worker.runtimes.loading import load_classifier

    return load_classifier(parity[1], BATCH, "fp32", "tensorflow")


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory):
    """One conversion cache for the tests that do not test the cache: each conversion is made once."""
    return str(tmp_path_factory.mktemp("openvino"))


def _openvino(parity, precision: str, cache_dir=None):
    from worker.runtimes.loading import load_classifier

    return load_classifier(parity[1], BATCH, precision, "openvino", cache_dir=cache_dir)


def _top5(probabilities: np.ndarray) -> np.ndarray:
    return np.argsort(-probabilities, axis=1)[:, :5]


@pytest.mark.slow
def test_fp32_openvino_gives_tensorflows_top5_and_probabilities(parity, tensorflow, ov_cache):
    openvino = _openvino(parity, "fp32", ov_cache)
    layers = ("avg_pool", "conv3_block4_out")
    assert openvino.takes_pixels and openvino.model_input(list(parity[3])).dtype == np.uint8
    assert np.array_equal(tensorflow.model_input(list(parity[3])), parity[2])
    tf_probabilities, tf_activations = tensorflow.predict_with(parity[2], layers)
    ov_probabilities, ov_activations = openvino.predict_with(parity[3], layers)
    assert openvino.runtime.startswith("openvino 20") and tensorflow.runtime.startswith("tensorflow 2.")
    assert list(tf_probabilities.argmax(axis=1)) == list(range(PICTURES))  # the weights tell the pictures apart
    assert np.array_equal(_top5(ov_probabilities), _top5(tf_probabilities))
    np.testing.assert_allclose(ov_probabilities, tf_probabilities, rtol=0, atol=1e-4)
    for name in layers:  # the activation dumps come from the same pass, on either runtime
        assert ov_activations[name].shape == tf_activations[name].shape == (PICTURES, *tf_activations[name].shape[1:])
        scale = np.abs(tf_activations[name]).max()
        assert np.abs(ov_activations[name] - tf_activations[name]).max() / scale < 1e-4, name


@pytest.mark.slow
def test_bf16_agreement_with_fp32_tensorflow_is_measured(parity, tensorflow, ov_cache):
    from worker.runtimes.precision import cpu_supports_bf16

    openvino = _openvino(parity, "bf16", ov_cache)  # the fp32 conversion, compiled for bf16
    if not cpu_supports_bf16():
        assert openvino.precision == "fp32"  # the fallback, said in the log
        pytest.skip("this CPU has no native bfloat16")
    reference, bf16 = tensorflow.predict(parity[2]), openvino.predict(parity[3])
    top1 = np.mean(reference.argmax(axis=1) == bf16.argmax(axis=1))
    same_top5_order = np.mean(np.all(_top5(reference) == _top5(bf16), axis=1))
    same_top5_set = np.mean([set(a) == set(b) for a, b in zip(_top5(reference), _top5(bf16), strict=True)])
    diff = np.abs(reference - bf16).max()
    print(f"OpenVINO bf16 vs TensorFlow fp32, {PICTURES} pictures: top-1 {top1:.3f}, top-5 set {same_top5_set:.3f}, "
          f"top-5 order {same_top5_order:.3f}, max probability difference {diff:.4f}")
    assert top1 >= 0.9 and diff < 0.1  # docs/runtime.md states the measured figures


@pytest.mark.slow
def test_the_conversion_is_cached_by_weights_and_layers(parity, tmp_path):
    first = _openvino(parity, "fp32", str(tmp_path))
    assert first.converted == [()]
    again = _openvino(parity, "fp32", str(tmp_path))
    assert again.converted == []  # read from the cache: no TensorFlow needed
    np.testing.assert_array_equal(again.predict(parity[3][:3]), first.predict(parity[3][:3]))
    again.predict_with(parity[3][:2], ("avg_pool",))
    assert again.converted == [("avg_pool",)]  # another layer set, another conversion
    assert len(os.listdir(tmp_path)) == 2


@pytest.mark.slow
def test_a_model_openvino_cannot_compile_names_the_tensorflow_runtime(parity, ov_cache):
    from worker.runtimes.openvino_runtime import OpenVINOClassifier, OpenVINOError

    classifier = OpenVINOClassifier(parity[1], BATCH, cache_dir=ov_cache, device="NO_SUCH_DEVICE")
    with pytest.raises(OpenVINOError, match="IMGQ_RUNTIME=tensorflow") as info:
        classifier.warm_up()
    assert "\n" not in str(info.value)


@pytest.fixture
def runtime_workers(parity, redis_url, tmp_path):
    """A real worker on each runtime, each with its own namespace, the parity weights and batch size 8."""
    from producer.local.workers import LocalWorker
    from tests.conftest import make_settings

    started = {}
    try:
        for runtime in ("openvino", "tensorflow"):
            settings = make_settings(redis_url, tmp_path / runtime, weights=parity[1], runtime=runtime)
            worker = LocalWorker(settings)
            worker.start()
            started[runtime] = (settings, worker)
        for settings, worker in started.values():
            worker.wait_ready(ResultStore.from_settings(settings), timeout=180)
        yield {runtime: settings for runtime, (settings, _) in started.items()}
    finally:
        for settings, worker in started.values():
            worker.stop()
            delete_namespace(redis_url, settings.namespace)


@pytest.mark.slow
def test_workers_on_either_runtime_give_the_same_labels_and_name_their_runtime(parity, runtime_workers):
    from producer.cli import cli

    folder = str(parity[0][0].parent)
    top5 = {}
    for runtime, settings in runtime_workers.items():
        result = CliRunner().invoke(cli, ["submit", folder, "--wait"], env=settings.as_env(), catch_exceptions=False)
        store = ResultStore.from_settings(settings)
        records = sorted(store.iter_results(result.stdout.strip()), key=lambda r: r["path"])
        assert [r["status"] for r in records] == ["ok"] * PICTURES
        assert {r["runtime"].split()[0] for r in records} == {runtime}
        assert {r["precision"] for r in records} == {"fp32"}
        assert [r["top_k"][0]["wnid"] for r in records] == [_wnid(i) for i in range(PICTURES)]
        top5[runtime] = [[t["wnid"] for t in r["top_k"]] for r in records]
        status = CliRunner().invoke(cli, ["status", "--workers"], env=settings.as_env())
        assert f"fp32 on {records[0]['runtime']}" in status.stdout
    assert top5["openvino"] == top5["tensorflow"]


def _wnid(index: int) -> str:
    from worker.batches.labels import class_index

    return class_index()[index][0]


def test_settings_choose_the_runtime():
    from imgq.settings import Settings

    assert Settings().runtime == "auto"  # the faster of the two, measured per model and CPU (runtime_choice)
    assert Settings.from_env({"IMGQ_RUNTIME": "tensorflow"}).runtime == "tensorflow"
    with pytest.raises(ValueError, match="IMGQ_RUNTIME"):
        Settings.from_env({"IMGQ_RUNTIME": "onnx"})
