"""The Dockerfile's openvino image has OpenVINO and baked conversions but no TensorFlow: a model it has no
conversion for is one clear error (a WeightsError, which stops a worker before it takes a batch), not an
ImportError's traceback. tests/test_compose.py checks the same in the image itself."""

from __future__ import annotations

import numpy as np
import pytest

from worker.runtimes import openvino_runtime
from worker.runtimes.keras_model import WeightsError


def test_a_conversion_missing_where_tensorflow_is_missing_is_one_clear_error(tmp_path, monkeypatch):
    def no_tensorflow(spec, weights):
        raise ModuleNotFoundError("No module named 'tensorflow'")

    monkeypatch.setattr(openvino_runtime, "build_model", no_tensorflow)
    classifier = openvino_runtime.load_openvino("random:5", 2, "fp32", str(tmp_path / "openvino"))
    with pytest.raises(WeightsError) as info:
        classifier.predict(np.zeros((1, 224, 224, 3), dtype=np.uint8))
    message = str(info.value)
    assert isinstance(info.value, openvino_runtime.OpenVINOError)
    assert "random:5" in message and "making one needs TensorFlow, which is missing here" in message
    assert "OPENVINO_WEIGHTS" in message and "\n" not in message
