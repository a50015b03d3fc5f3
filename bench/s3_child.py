"""The producer as bench/s3.py measures it, in a process of its own: `imgq ARGS` and what it cost. Imports nothing
of the bench but this (the bench's modules load numpy, Pillow and more, which the producer would then count)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def measured_cli(traced: bool) -> None:
    """`imgq ARGS` (``sys.argv[2:]``), under tracemalloc when ``traced`` (started once the CLI, Celery and imgq's
    boto3 client are loaded); its peak and this process's VmHWM written to the file ``sys.argv[1]``."""
    import tracemalloc

    import celery  # noqa: F401
    import kombu.transport.redis  # noqa: F401

    from imgq.storage.s3 import client
    from producer.cli import cli

    if traced:
        client()
        tracemalloc.start()
    try:
        cli.main(sys.argv[2:], prog_name="imgq", standalone_mode=False)
    finally:
        with open("/proc/self/status") as status:
            vmhwm = int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
        peak = tracemalloc.get_traced_memory()[1] if traced else None
        Path(sys.argv[1]).write_text(json.dumps({"peak": peak, "vmhwm_kb": vmhwm}))
