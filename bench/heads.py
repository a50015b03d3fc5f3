"""`python -m bench.heads FOLDER`: how accurate a head (imgq learn) is from how many examples.

No trained weights can be downloaded here, so the features are those of ResNet50 with random weights
(``random:0``), and the tasks are ones such features can tell apart, built from the real photos in FOLDER:

- ``colour``: a photo as it is, or turned grey (the same photos on both sides, never both versions of one
  photo in a draw);
- ``bright``: the brightest third of the photos against the darkest third (mean luminance).

For each number of examples per label, ``draws`` random draws take that many examples of each label to fit
the head exactly as `imgq learn` does (producer.learn.pipeline) and measure its accuracy on every other
photo. Printed: the mean and the worst held-out accuracy, with the machine it ran on.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile

import numpy as np
from PIL import Image

EXAMPLES = (5, 10, 20, 40)
DRAWS = 20


def features(images: list[np.ndarray]) -> np.ndarray:
    """avg_pool features of RGB uint8 pictures, preprocessed as a worker does, on ResNet50 ``random:0``."""
    from worker.images.preprocess import TARGET_SIZE, to_model_input
    from worker.runtimes.loading import load_classifier

    classifier = load_classifier("random:0", 32, runtime="openvino", cache_dir=tempfile.mkdtemp())
    rows = []
    for start in range(0, len(images), 32):
        chunk = images[start:start + 32]
        batch = np.empty((len(chunk), *TARGET_SIZE, 3), dtype=np.float32)
        for row, pixels in zip(batch, chunk, strict=True):
            to_model_input(pixels, out=row)
        rows.append(classifier.predict_with(batch, ("avg_pool",))[1]["avg_pool"].reshape(len(chunk), -1))
    return np.concatenate(rows)


def load(paths: list[str]) -> list[np.ndarray]:
    from worker.images.preprocess import load_pixels

    return [load_pixels(path) for path in paths]


def tasks(pixels: list[np.ndarray]) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """Task name -> (pictures of label A, pictures of label B)."""
    half = len(pixels) // 2
    grey = [np.repeat(np.asarray(Image.fromarray(p).convert("L"))[..., None], 3, axis=2) for p in pixels[half:]]
    luminance = np.argsort([p.mean() for p in pixels])
    third = len(pixels) // 3
    return {"colour": (pixels[:half], grey),
            "bright": ([pixels[i] for i in luminance[-third:]], [pixels[i] for i in luminance[:third]])}


def held_out_accuracy(a: np.ndarray, b: np.ndarray, n: int, draws: int, seed: int = 0) -> list[float]:
    from producer.learn import pipeline

    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(draws):
        pick_a, pick_b = rng.permutation(len(a)), rng.permutation(len(b))
        x = np.concatenate([a[pick_a[:n]], b[pick_b[:n]]])
        y = np.array([0] * n + [1] * n)
        test_x = np.concatenate([a[pick_a[n:]], b[pick_b[n:]]])
        test_y = np.array([0] * (len(a) - n) + [1] * (len(b) - n))
        scores.append(float((pipeline().fit(x, y).predict(test_x) == test_y).mean()))
    return scores


def main(folder: str) -> None:
    from bench.images import list_images

    paths = list_images(folder, None)
    with open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                   platform.processor())
    print(f"{len(paths)} photos from {folder}; ResNet50 random:0 avg_pool features (untrained); CPU {cpu}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    for task, (a, b) in tasks(load(paths)).items():
        fa, fb = features(a), features(b)
        for n in EXAMPLES:
            if n >= min(len(fa), len(fb)):
                continue
            scores = held_out_accuracy(fa, fb, n, DRAWS)
            print(f"{task:7s} {n:3d} examples per label: held-out accuracy mean {np.mean(scores):.3f}, "
                  f"worst {min(scores):.3f} ({DRAWS} draws, {len(fa) + len(fb) - 2 * n} photos held out)")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/photos")
