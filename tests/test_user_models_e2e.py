"""A real worker serving a user's model folder (IMGQ_MODEL): records carry the folder model's id and its own
labels, made on OpenVINO; a malformed folder stops the worker with one line a problem, never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from imgq.models.resolve import resolve
from imgq.results.store import ResultStore, delete_namespace
from tests import user_models

pytestmark = pytest.mark.slow

LEVELS = (15, 90, 170, 235)


@pytest.fixture
def brightness_worker(redis_url, tmp_path):
    from producer.local.workers import LocalWorker
    from tests.conftest import make_settings

    folder = user_models.brightness_folder(tmp_path / "brightness")
    settings = make_settings(redis_url, tmp_path, model=str(folder), weights="imagenet", runtime="openvino")
    worker = LocalWorker(settings)
    worker.start()
    try:
        worker.wait_ready(ResultStore.from_settings(settings), timeout=240)
        yield settings, folder
    finally:
        worker.stop()
        delete_namespace(redis_url, settings.namespace)


def test_a_worker_serves_a_greyscale_model_folder(brightness_worker, tmp_path):
    from producer.cli import cli

    settings, folder = brightness_worker
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for level in LEVELS:  # colour pictures too: the worker makes them greyscale, as load_img would
        user_models.grey_picture(pictures / f"level-{level:03d}.png", level, size=(300, 200), seed=level)
    result = CliRunner().invoke(cli, ["submit", str(pictures), "--wait"], env=settings.as_env(),
                                catch_exceptions=False)
    records = sorted(ResultStore.from_settings(settings).iter_results(result.stdout.strip()), key=lambda r: r["path"])
    assert [r["status"] for r in records] == ["ok"] * len(LEVELS)
    assert {r["model"] for r in records} == {resolve(str(folder)).id}
    assert {r["runtime"].split()[0] for r in records} == {"openvino"}
    assert [r["top_k"][0]["label"] for r in records] == ["dark" if v < 128 else "bright" for v in LEVELS]
    assert all(set(t) == {"label", "index", "score"} for r in records for t in r["top_k"])
    assert [len(r["top_k"]) for r in records] == [2] * len(LEVELS)  # top-5 of a 2-class model: 2


def test_a_malformed_folder_stops_the_worker_with_one_line_a_problem(redis_url, tmp_path):
    import keras

    from producer.local.workers import LocalServiceError, LocalWorker
    from tests.conftest import make_settings

    image = keras.Input((8, 8, 3))
    model = keras.Model(image, keras.layers.Dense(3)(keras.layers.Flatten()(image)))
    folder = user_models.write_folder(tmp_path / "bad", model, ("a", "b"))
    settings = make_settings(redis_url, tmp_path, model=str(folder), weights="imagenet", runtime="tensorflow")
    worker = LocalWorker(settings)
    worker.start()
    try:
        with pytest.raises(LocalServiceError, match="2 class names for 3 outputs"):
            worker.wait_ready(ResultStore.from_settings(settings), timeout=240)
        assert worker.started.wait(10) == 2
        log = worker.log_path.read_text()
        assert "Traceback" not in log and "labels.txt: 2 class names for 3 outputs" in log
    finally:
        worker.stop()
        delete_namespace(redis_url, settings.namespace)
