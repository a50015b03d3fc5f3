"""Which precision a runtime computes in: fp32, or bf16 where the CPU computes bfloat16 natively.

Asked-for and in-effect precision differ on a CPU without native bf16 (emulated, it would be slower than
fp32): records, the ready line and ``status --workers`` name the one in effect.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_supports_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU computes bfloat16 natively (AVX512_BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        with open(cpuinfo) as file:
            flags = next((line for line in file if line.startswith("flags")), "").split()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str) -> str:
    """The precision in effect for a requested one: bf16 falls back to fp32, with a warning, on a CPU
    without native bfloat16 (emulated, it would be slower than fp32)."""
    if precision != "bf16":
        return "fp32"
    if not cpu_supports_bf16():
        log.warning("This CPU has no native bfloat16 (%s): running fp32.", " or ".join(BF16_CPU_FLAGS))
        return "fp32"
    return "bf16"


def enable_precision(precision: str) -> str:
    """Turn on oneDNN's automatic bfloat16 mixed precision for the TensorFlow graphs built after this call.

    Weights and inputs stay float32; TensorFlow's grappler rewrites convolutions and matmuls to bfloat16
    where it is numerically safe. Returns the precision in effect (see ``resolve_precision``).
    """
    if resolve_precision(precision) != "bf16":
        return "fp32"
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    return "bf16"
