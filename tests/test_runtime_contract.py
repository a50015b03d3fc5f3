"""What runs a model: one contract (worker/runtimes/base.py's ModelRuntime) and one test class run against every
runtime (TensorFlow fp32, OpenVINO fp32, bf16 and int8), on ResNet50 with weights whose top-1 depends on the picture
(tests/weights.py), so that "the rows come back in order" and "slices give what one pass gives" can fail.

A new runtime adds one entry to RUNTIMES; every test below then runs against it unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import PARITY_PICTURES

BATCH = 5  # the pictures run in slices of 5: the last one short
RUNTIMES = [("tensorflow", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("openvino"))


@pytest.fixture(scope="module", params=RUNTIMES, ids=["-".join(r) for r in RUNTIMES])
def runtime(request, parity, ov_cache):
    from worker.runtimes.int8_serving import Int8Options
    from worker.runtimes.loading import load_classifier
    from worker.runtimes.precision import cpu_supports_bf16

    name, precision = request.param
    if precision == "bf16" and not cpu_supports_bf16():
        pytest.skip("this CPU has no native bfloat16 (avx512_bf16 or amx_bf16): bf16 runs as fp32")
    calibration = Int8Options(calibration=str(parity[0][0].parent))  # int8: quantized on the parity pictures
    return load_classifier(parity[1], BATCH, precision, name, cache_dir=ov_cache, int8=calibration)


@pytest.fixture(scope="module")
def pixels(parity):
    return list(parity[3])


class TestModelRuntimeContract:
    def test_it_is_a_model_runtime_and_says_what_it_is(self, runtime):
        from worker.runtimes.base import ModelRuntime

        assert isinstance(runtime, ModelRuntime)
        assert runtime.spec.id == runtime.model_id == "resnet50" and runtime.batch_size == BATCH
        assert runtime.weights_id.startswith("file:") and runtime.precision in ("fp32", "bf16", "int8")
        assert runtime.runtime.split()[0] in ("tensorflow", "openvino") and runtime.runtime.split()[1][0].isdigit()
        assert runtime.load_seconds > 0 and runtime.target.shape == (224, 224, 3)

    def test_model_input_has_one_row_per_image_and_leaves_the_pixels_alone(self, runtime, pixels):
        before = [p.copy() for p in pixels[:3]]
        batch = runtime.model_input(pixels[:3])
        assert batch.shape == (3, 224, 224, 3)
        assert batch.dtype == (np.uint8 if runtime.takes_pixels else np.float32)
        assert all(np.array_equal(a, b) for a, b in zip(before, pixels[:3], strict=True))

    def test_probabilities_are_one_row_per_image_in_order(self, runtime, pixels):
        probabilities = runtime.predict(runtime.model_input(pixels))
        assert probabilities.shape == (PARITY_PICTURES, 1000) and probabilities.dtype == np.float32
        assert np.all(np.isfinite(probabilities))
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
        top1 = probabilities.argmax(axis=1)
        agreeing = np.mean(top1 == np.arange(PARITY_PICTURES))
        assert agreeing == 1.0 if runtime.precision == "fp32" else agreeing >= 0.9  # bf16: measured in parity

    def test_slices_give_what_single_images_give(self, runtime, pixels):
        whole = runtime.predict(runtime.model_input(pixels[:7]))  # slices of 5 and 2
        one_by_one = np.concatenate([runtime.predict(runtime.model_input([p])) for p in pixels[:7]])
        tolerance = 1e-4 if runtime.precision == "fp32" else 2e-2
        np.testing.assert_allclose(whole, one_by_one, rtol=0, atol=tolerance)

    def test_an_empty_batch_gives_no_rows(self, runtime):
        probabilities, activations = runtime.predict_with(runtime.model_input([]), ("avg_pool",))
        assert probabilities.shape == (0, 1000) and set(activations) == {"avg_pool"}

    def test_activations_come_from_the_same_pass(self, runtime, pixels):
        batch = runtime.model_input(pixels[:6])
        probabilities, activations = runtime.predict_with(batch, ("avg_pool", "conv5_block3_out"))
        assert activations["avg_pool"].shape == (6, 2048)
        assert activations["conv5_block3_out"].shape == (6, 7, 7, 2048)
        dumped_in = getattr(runtime, "last_precision", runtime.precision)
        alone = runtime.predict(batch)
        if dumped_in != getattr(runtime, "last_precision", runtime.precision):  # int8 dumps other layers in fp32
            assert list(probabilities.argmax(axis=1)) == list(alone.argmax(axis=1))
            return
        tolerance = 1e-4 if runtime.precision == "fp32" else 2e-2
        np.testing.assert_allclose(probabilities, alone, rtol=0, atol=tolerance)

    def test_warm_up_may_run_again(self, runtime):
        runtime.warm_up()

    def test_warm_up_costs_one_small_pass_whatever_the_batch_size(self, runtime, monkeypatch):
        """A worker with --batch-size 1024 ran 1024 images, then 1, to warm up at every start: a minute or more
        on two cores (issue 25.4). One pass of min(batch size, 32) images now, through predict."""
        passes = []
        predict_with = runtime.predict_with

        def counted(batch, layers):
            passes.append(len(batch))
            return predict_with(batch, layers)

        monkeypatch.setattr(runtime, "batch_size", 1024)
        monkeypatch.setattr(runtime, "predict_with", counted)
        runtime.warm_up()
        assert passes == [32] and runtime.warm_up_images == 32
        monkeypatch.setattr(runtime, "batch_size", 3)
        runtime.warm_up()
        assert passes == [32, 3]
