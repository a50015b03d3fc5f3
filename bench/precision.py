"""bf16 against fp32 on the benchmark images: the model's own speed-up and how far its outputs move.

oneDNN's automatic bfloat16 mixed precision is a Grappler option that TensorFlow applies when a function
runs, not when it is traced (measured: an fp32 function already run changes its outputs once the option is
set), so it is switched on only around the bf16 calls and restored after.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_OPTION = "auto_mixed_precision_onednn_bfloat16"


def cpu_bf16_flags() -> list[str]:
    """The CPU flags (from /proc/cpuinfo) that give oneDNN native bfloat16 arithmetic; empty when none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [flag for flag in BF16_FLAGS if flag in flags]


@contextlib.contextmanager
def bf16_graphs():
    """TensorFlow functions run inside this block use oneDNN bfloat16 mixed precision."""
    import tensorflow as tf

    before = tf.config.optimizer.get_experimental_options().get(_OPTION, False)
    tf.config.optimizer.set_experimental_options({_OPTION: True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({_OPTION: before})


def logits_classifier(model, batch_size: int):
    """A Classifier over the same weights whose last Dense layer has no softmax: it returns logits."""
    from keras.applications import resnet50

    from worker.runtimes.tensorflow_runtime import Classifier

    logits_model = resnet50.ResNet50(weights=None, classifier_activation=None)
    logits_model.set_weights(model.get_weights())
    return Classifier(logits_model, "logits", batch_size)


def compare(model, batches: list[np.ndarray], batch_size: int) -> dict:
    """Logits of fp32 and bf16 on ``batches``: relative error, top-1 and top-5 agreement.

    Relative error of an image: the largest logit difference over the largest fp32 logit magnitude (an
    element-wise ratio explodes near zero logits).
    """
    classifier = logits_classifier(model, batch_size)
    fp32 = np.concatenate([classifier.predict(b) for b in batches])
    with bf16_graphs():
        bf16 = np.concatenate([classifier.predict(b) for b in batches])
    relative = np.abs(bf16 - fp32).max(axis=1) / np.abs(fp32).max(axis=1)
    top5_32, top5_16 = (np.sort(np.argsort(-x, axis=1)[:, :5], axis=1) for x in (fp32, bf16))
    return {
        "images": len(fp32),
        "effective": bool(np.any(bf16 != fp32)),  # identical logits: the option did not take
        "max_relative_error": float(relative.max()),
        "median_relative_error": float(np.median(relative)),
        "top1_agreement": float(np.mean(fp32.argmax(1) == bf16.argmax(1))),
        "top5_agreement": float(np.mean(np.all(top5_32 == top5_16, axis=1))),
        # Random weights put most images in the same top class: agreement means little when this is 1.
        "distinct_top1_fp32": int(len(np.unique(fp32.argmax(1)))),
    }
