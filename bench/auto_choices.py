"""What IMGQ_RUNTIME=auto chooses for each model on this CPU, from an empty conversion cache: the first load of
each (conversion and measurement included), as a worker's first start makes it.

    python -m bench.auto_choices resnet50 efficientnetv2b0 ... [> choices.json]

Random weights, batch size 32; prints one line per model as it goes, then the whole as JSON with the CPU and
the load average (the machine's other work can sway a measurement: see docs/runtime.md).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def main(models: list[str]) -> None:
    from worker.runtimes.auto import cpu_fingerprint
    from worker.runtimes.loading import load_classifier

    choices = {}
    before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="imgq-auto-") as cache:
        for name in models:
            started = time.time()
            classifier = load_classifier("random", 32, "fp32", "auto", cache, model=name)
            choices[name] = {"chose": classifier.runtime, "why": getattr(classifier, "chosen_by", ""),
                             "first_load_seconds": round(time.time() - started, 1)}
            print(name, choices[name], file=sys.stderr, flush=True)
            del classifier
    print(json.dumps({"cpu": cpu_fingerprint()[0], "loadavg_before": before, "loadavg_after": os.getloadavg(),
                      "choices": choices}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:] or ["resnet50"])
