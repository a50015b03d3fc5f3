"""worker/batches/batch.py's pipeline without TensorFlow: a real store, real files and real decoding, with a small
stand-in for the model whose answer depends on the picture (so that a label can be checked)."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from imgq.contract import BatchMessage
from imgq.jobs.deliveries import Deliveries
from imgq.labels.classes import class_index
from imgq.models.spec import builtin_spec
from tests import imagegen
from tests.jobs import commit_job
from worker.batches.batch import run_batch
from worker.batches.gather import Gatherer
from worker.images.preprocess import RESNET50, to_model_input
from worker.process import Runtime


class BrightnessModel:
    """Class = the image's mean brightness (of the preprocessed input), one of 256: not ResNet50, but a
    model whose top-1 each picture decides, and which counts the images it was given."""

    weights_id, precision, load_seconds, batch_size = "file:stand-in.h5:sha256:000000000000", "fp32", 0.0, 32
    runtime = "stand-in 1.0"
    spec, target, model_id = builtin_spec("resnet50"), RESNET50, "resnet50"

    def __init__(self):
        self.seen = 0

    def model_input(self, pixels: list[np.ndarray]) -> np.ndarray:
        return np.stack([to_model_input(p) for p in pixels])  # ResNet50's float input, as TensorFlow takes it

    def predict_with(self, batch: np.ndarray, layers: tuple[str, ...]):
        self.seen += len(batch)
        probabilities = np.full((len(batch), 1000), 1e-6, dtype=np.float32)
        for row, image in zip(probabilities, batch, strict=True):
            row[expected_class(image)] = 0.9
        return probabilities, {}


def expected_class(model_input: np.ndarray) -> int:
    return int(np.clip(model_input.mean() + 128, 0, 255))


@pytest.fixture
def runtime(settings):
    from imgq.results.store import ResultStore

    store = ResultStore.from_settings(settings)
    model = BrightnessModel()
    pool = ThreadPoolExecutor(2)
    yield Runtime(settings, model, Gatherer(model, 32), store, Deliveries(store.redis, store.keys), pool,
                  worker_id="test@host:1")
    pool.shutdown()


def message(job: str, paths: list[str], **options) -> BatchMessage:
    return BatchMessage(job=job, batch=0, images=tuple(enumerate(paths)), top_k=3, **options)


@pytest.fixture
def pictures(tmp_path):
    good = [str(imagegen.save(tmp_path / f"{i}.png", size=(64, 48), seed=i)) for i in range(3)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a picture")
    return [*good, str(broken)]


def test_one_record_per_image_with_the_models_labels_and_the_decoders_errors(runtime, pictures):
    commit_job(runtime.store, "j1", pictures, batch_size=4, top_k=3)
    records = run_batch(message("j1", pictures), runtime, worker="test@host")
    assert [r.image for r in sorted(records, key=lambda r: r.image)] == [0, 1, 2, 3]
    stored = list(runtime.store.iter_records("j1"))
    assert [r.status for r in stored] == ["ok", "ok", "ok", "error"] and stored[3].error.code == "not_an_image"
    assert all(len(r.top_k) == 3 and r.top_k[0].score == pytest.approx(0.9) for r in stored[:3])
    assert {r.weights for r in stored} == {BrightnessModel.weights_id} and runtime.store.status("j1").state == "done"
    from PIL import Image

    from worker.images.preprocess import INTERPOLATION, TARGET_SIZE

    for record, path in zip(stored[:3], pictures, strict=False):  # the label is the picture's own
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize(TARGET_SIZE[::-1], INTERPOLATION))
        assert record.top_k[0].wnid == class_index()[expected_class(to_model_input(pixels))][0]


def test_a_redelivered_batch_classifies_only_the_images_without_records(runtime, pictures):
    commit_job(runtime.store, "j1", pictures, batch_size=4, top_k=3)
    run_batch(message("j1", pictures[:2] + pictures[2:3]), runtime, worker="w")
    seen = runtime.classifier.seen
    again = run_batch(message("j1", pictures), runtime, worker="w")  # images 0-2 have records
    assert [r.image for r in again] == [3] and runtime.classifier.seen == seen  # 3 fails to decode: no pass
    assert runtime.store.status("j1").processed == 4


def test_a_cancelled_or_deleted_jobs_batch_does_nothing(runtime, pictures):
    commit_job(runtime.store, "j1", pictures, batch_size=4)
    runtime.store.cancel("j1")
    assert run_batch(message("j1", pictures), runtime, worker="w") == [] and runtime.classifier.seen == 0
    commit_job(runtime.store, "j2", pictures, batch_size=4)
    runtime.store.delete("j2")
    assert run_batch(message("j2", pictures), runtime, worker="w") == []
    assert not [k for k in runtime.store.redis.keys(f"{runtime.store.keys.ns}:*") if "j2" in k]


def test_a_sink_job_deleted_during_the_forward_pass_leaves_no_file(runtime, pictures, tmp_path):
    """`imgq delete` while a batch is in its forward pass removes the job's files and keys; the batch's file,
    written just after, stayed for ever (`<sink>/<job>/batch-*.parquet` of a job that no longer exists)."""
    runtime.settings = dataclasses.replace(runtime.settings, sink_dir=str(tmp_path / "sink"))
    runtime.store.sink_dir = runtime.settings.effective_sink_dir
    commit_job(runtime.store, "j1", pictures, batch_size=4, params={"sink": True})
    forward = runtime.classifier.predict_with

    def deleted_meanwhile(batch, layers):
        runtime.store.delete("j1")
        return forward(batch, layers)

    runtime.classifier.predict_with = deleted_meanwhile
    run_batch(message("j1", pictures, sink=True), runtime, worker="w")
    assert runtime.classifier.seen == 3  # the pass ran
    assert not (tmp_path / "sink" / "j1").exists()
    assert not [k for k in runtime.store.redis.keys(f"{runtime.store.keys.ns}:*") if k.endswith(":j1")]


def test_a_sink_batch_goes_to_its_file_and_redis_counts_it(runtime, pictures, tmp_path):
    from imgq.results import sink

    runtime.settings = dataclasses.replace(runtime.settings, sink_dir=str(tmp_path / "sink"))
    runtime.store.sink_dir = runtime.settings.effective_sink_dir
    commit_job(runtime.store, "j1", pictures, batch_size=4, params={"sink": True})
    run_batch(message("j1", pictures, sink=True), runtime, worker="w")
    run_batch(message("j1", pictures, sink=True), runtime, worker="w")  # counted: not done again
    assert sink.count_rows(runtime.settings.effective_sink_dir, "j1") == 4 and runtime.classifier.seen == 3
    assert runtime.store.status("j1").state == "done"
    assert runtime.store.redis.hlen(runtime.store.keys.results("j1")) == 0
