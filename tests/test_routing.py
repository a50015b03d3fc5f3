"""Jobs name their model and go to the queue of that model's workers (no worker here: the queues are read in
Redis). End-to-end routing with real workers of two models is in tests/reliability/test_models_e2e.py."""

from __future__ import annotations

import json

import pytest

from imgq.celery_config import queue_name
from imgq.contract import MODEL_NAME, BatchMessage, BatchRef, Heartbeat, MessageError
from imgq.jobs import submit as submission
from imgq.jobs.queue import publish, refs
from tests import imagegen
from tests.test_walk_and_submit import queued_refs


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        imagegen.save(folder / f"{i}.png", size=(16, 16), seed=i)
    return folder


def queued(store, settings, model: str = MODEL_NAME) -> list[dict]:
    """The batch references waiting in ``model``'s queue, oldest first."""
    return queued_refs(store, model)


def alive(store, model: str, name: str = "w1") -> Heartbeat:
    """A heartbeat of a worker serving ``model`` (the key a live worker refreshes)."""
    heartbeat = Heartbeat(hostname=name, pid=7, host="h", model=model, model_id=model, pool="threads")
    store.send_heartbeat(f"{name}:7", heartbeat, ttl=30)
    return heartbeat


def test_queue_names_keep_resnet50_where_it_was(settings):
    """resnet50's queue is the namespace itself, the queue every job used before jobs named a model: workers
    and producers of either age keep meeting. Any other model has a queue of its own."""
    assert queue_name(settings) == queue_name(settings, "resnet50") == settings.namespace
    assert queue_name(settings, "efficientnetv2b0") == f"{settings.namespace}.efficientnetv2b0"


def test_a_job_goes_to_its_models_queue_only(settings, store, photos):
    paths = sorted(str(p) for p in photos.iterdir())
    job = submission.submit(paths, settings=settings, store=store, batch_size=2, model="efficientnetv2b0").job
    assert [r["batch"] for r in queued(store, settings, "efficientnetv2b0")] == [0, 1, 2]
    assert queued(store, settings) == []  # nothing for resnet50's workers
    assert store.status(job).model == "efficientnetv2b0" and store.status(job).params["model"] == "efficientnetv2b0"
    assert {m.get("model") for m in store.iter_batches(job)} == {"efficientnetv2b0"}
    default = submission.submit(paths, settings=settings, store=store, batch_size=5).job
    assert [r["job"] for r in queued(store, settings)] == [default]
    assert store.status(default).model == MODEL_NAME
    assert "model" not in store.batch(default, 0)  # a resnet50 batch is what it always was


def test_requeued_batches_go_to_their_models_queue(settings, store, photos):
    paths = sorted(str(p) for p in photos.iterdir())
    job = submission.submit(paths, settings=settings, store=store, batch_size=5, model="convnexttiny").job
    publish(refs(store.unfinished_batches(job)), settings)
    assert [r["job"] for r in queued(store, settings, "convnexttiny")] == [job, job]
    assert queued(store, settings) == []


def test_a_batch_message_names_a_model_never_a_path():
    message = BatchMessage(job="j1", batch=0, images=((0, "/a.jpg"),), top_k=5, model="flowers")
    assert BatchMessage.from_dict(message.to_dict()) == message
    assert "model" not in BatchMessage("j1", 0, ((0, "/a.jpg"),), 5).to_dict()
    for bad in ("../models/evil", "/srv/model", "a b", "", "x" * 65):
        with pytest.raises(MessageError):
            BatchMessage.from_dict({**message.to_dict(), "model": bad})
    assert BatchRef("j1", 0, "flowers").to_dict() == {"v": 2, "job": "j1", "batch": 0}  # the stored batch says


def test_submit_refuses_an_unknown_model_with_the_closest_names(run, photos, store):
    result = run("submit", str(photos), "--model", "efficientnetv2b")
    assert result.exit_code == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert "Did you mean: efficientnetv2b0" in result.stderr
    assert store.list_jobs() == []  # nothing queued


def test_submit_takes_the_name_of_a_model_a_live_worker_serves(run, photos, store, settings):
    assert run("submit", str(photos), "--model", "flowers").exit_code == 2
    alive(store, "flowers")
    job = run("submit", str(photos), "--model", "flowers").stdout.strip()
    assert store.status(job).model == "flowers" and len(queued(store, settings, "flowers")) == 1


def test_status_says_no_live_worker_serves_the_model(run, photos, store):
    alive(store, "resnet50")
    job = run("submit", str(photos), "--model", "efficientnetv2b0").stdout.strip()
    text = run("status", job).stdout
    assert "model: efficientnetv2b0" in text
    assert "waiting: no live worker serves model efficientnetv2b0" in text
    assert json.loads(run("status", job, "--json").stdout)["waiting"].startswith(
        "no live worker serves model efficientnetv2b0")
    assert "No live worker serves model efficientnetv2b0" in run("status").stderr
    alive(store, "efficientnetv2b0", name="w2")
    assert "waiting" not in run("status", job).stdout


def test_status_workers_shows_each_workers_model_and_each_queue(run, photos, store):
    alive(store, "resnet50")
    alive(store, "flowers", name="w2")
    run("submit", str(photos), "--model", "efficientnetv2b0", "--batch-size", "2")
    run("submit", str(photos), "--model", "flowers")
    text = run("status", "--workers").stdout.splitlines()
    assert text[0] == "4 batches queued (efficientnetv2b0 3, flowers 1); 2 workers alive; 2 jobs in flight."
    assert text[1].startswith("  w2 on h, pid 7: model flowers,") and text[2].startswith("  w1 on h, pid 7: model "
                                                                                          "resnet50,")
    assert text[3].endswith(", model efficientnetv2b0; waiting: no live worker serves model efficientnetv2b0")
    assert text[4].endswith(", model flowers")
    data = json.loads(run("status", "--workers", "--json").stdout)
    assert data["queued_by_model"] == {"efficientnetv2b0": 3, "flowers": 1, "resnet50": 0}
    assert {w["hostname"]: w["model"] for w in data["workers"]} == {"w1": "resnet50", "w2": "flowers"}


def test_a_model_folder_sends_only_its_name(run, photos, store, settings, tmp_path):
    """`submit --model FOLDER` reads the folder's name here and sends the name: no path reaches a worker."""
    from tests.test_models import fake_keras

    folder = tmp_path / "models" / "brightness"
    folder.mkdir(parents=True)
    fake_keras(folder / "model.keras")  # what the producer reads of a model file; no worker loads it here
    (folder / "labels.txt").write_text("dark\nbright\n")
    job = run("submit", str(photos), "--model", str(folder)).stdout.strip()
    status = store.status(job)
    assert status.model == "brightness"
    assert str(folder.parent) not in json.dumps(status.params) + json.dumps(list(store.iter_batches(job)))
    assert str(folder.parent) not in json.dumps(queued(store, settings, "brightness"))
    assert len(queued(store, settings, "brightness")) == 1


def test_activations_are_checked_against_the_jobs_model(run, photos, store):
    """EfficientNetV2-B0 has no ResNet50 layer names, and the reverse; a folder model's names are its worker's
    to check. Refused before anything is queued, with the closest names of the job's model."""
    refused = run("submit", str(photos), "--model", "efficientnetv2b0", "--activations", "avg_pool,conv5_block3_out")
    assert refused.exit_code == 2 and "EfficientNetV2B0 has no layer 'conv5_block3_out'" in refused.stderr
    assert store.list_jobs() == []
    job = run("submit", str(photos), "--model", "efficientnetv2b0", "--activations", "top_activation,avg_pool")
    assert job.exit_code == 0, job.output
    assert store.status(job.stdout.strip()).params["activations"] == ["top_activation", "avg_pool"]
    assert "about" in job.stderr  # sized from its layer table
    assert run("submit", str(photos), "--activations", "top_activation").exit_code == 2  # resnet50's table


def test_layers_of_a_model(run, tmp_path):
    rows = run("layers", "--model", "efficientnetv2b0").stdout.splitlines()
    assert rows[0].split() == ["LAYER", "SHAPE", "FLOAT16", "FLOAT32"]
    assert any(row.split()[:2] == ["avg_pool", "1280"] for row in rows)
    assert any(row.split()[:2] == ["avg_pool", "2048"] for row in run("layers").stdout.splitlines())
    unknown = run("layers", "--model", "mobilenetv3")
    assert unknown.exit_code == 2 and "Did you mean: mobilenetv3large" in unknown.stderr
    from tests.test_models import fake_keras

    folder = tmp_path / "digits"
    folder.mkdir()
    fake_keras(folder / "model.keras")
    (folder / "labels.txt").write_text("dark\nbright\n")
    result = run("layers", "--model", str(folder))
    assert result.exit_code == 1 and "known only to the worker" in result.stderr


@pytest.mark.parametrize("value", ["", " ", "..", "/no/such/folder", "a:b", "x" * 300, "resnet50\n"])
def test_odd_model_values_are_one_line_and_exit_2(run, photos, store, value):
    result = run("submit", str(photos), "--model", value)
    assert result.exit_code == 2 and result.stdout == "" and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert store.list_jobs() == []
