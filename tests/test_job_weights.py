"""A job says which weights it was asked for (issue 25.1): its message and record carry them, its batches wait in
the queue of those weights, only a worker with them takes it, and `imgq status` says why it waits. No worker here:
the queues and heartbeats are read in a real Redis. With real workers: tests/test_classify_ends_its_job.py."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from imgq.celery_config import queue_name
from imgq.contract import MODEL_NAME, BatchMessage, Heartbeat, MessageError, model_queue, serves_weights
from imgq.jobs.deliveries import Deliveries
from imgq.jobs.queue import publish, refs
from imgq.models.weights import WeightsRequestError, weights_key
from imgq.schedules.tick import tick
from tests import imagegen
from tests.test_walk_and_submit import queued_refs
from worker.reconcile import reconcile

RANDOM_1 = "random:1 (untrained: labels are meaningless)"  # what a worker with IMGQ_WEIGHTS=random:1 says it has


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        imagegen.save(folder / f"{i}.png", size=(16, 16), seed=i)
    return folder


def alive(store, weights: str, model: str = MODEL_NAME, name: str = "w1") -> None:
    """The heartbeat of a live worker of ``model`` with ``weights`` (its weights id, as it sends it)."""
    store.send_heartbeat(f"{name}:7", Heartbeat(hostname=name, pid=7, host="h", model=model, model_id=model,
                                                weights=weights, pool="threads", sent_at=time.time()), ttl=60)


def waiting_in(store, model: str = MODEL_NAME, weights: str = "") -> list[dict]:
    """The batch references waiting in the queue of ``model`` with ``weights`` ("": the model's own queue)."""
    if not weights:
        return queued_refs(store, model)
    raw = store.redis.lrange(store.keys.model_queue(model_queue(store.keys.ns, model, weights)), 0, -1)
    import base64

    return [json.loads(base64.b64decode(json.loads(r)["body"]))[0][0] for r in reversed(raw)]


def test_a_message_says_which_weights_and_one_without_means_any():
    message = BatchMessage(job="j1", batch=0, images=((0, "/a.jpg"),), top_k=5, weights="random:7")
    assert message.to_dict()["weights"] == "random:7"
    assert BatchMessage.from_dict(message.to_dict()) == message
    old = BatchMessage("j1", 0, ((0, "/a.jpg"),), 5).to_dict()
    assert "weights" not in old and BatchMessage.from_dict(old).weights == ""  # as every message before
    for bad in ("random:7\n", "x" * 1000, 7):
        with pytest.raises(MessageError):
            BatchMessage.from_dict({**message.to_dict(), "weights": bad})
    assert serves_weights(RANDOM_1, "") and serves_weights(RANDOM_1, "random:1")
    assert not serves_weights(RANDOM_1, "random:7") and not serves_weights("imagenet", "random:1")
    assert Heartbeat("w", weights=RANDOM_1).serves(MODEL_NAME, "random:1")
    assert not Heartbeat("w", weights=RANDOM_1).serves("convnexttiny", "random:1")


def test_weights_are_named_without_loading_them_as_the_worker_names_them(tmp_path):
    from tests.test_models import fake_keras
    from worker.runtimes.keras_model import describe_weights, model_spec

    file = tmp_path / "mine.weights.h5"
    file.write_bytes(b"any bytes: nothing is loaded")
    folder = tmp_path / "digits"
    folder.mkdir()
    fake_keras(folder / "model.keras")
    (folder / "labels.txt").write_text("dark\nbright\n")
    spec = model_spec(str(folder))
    for weights, model in [("imagenet", None), ("random", None), ("random:7", None), (str(file), None),
                           ("imagenet", spec), (str(file), spec)]:
        assert serves_weights(describe_weights(weights, model), weights_key(weights, model))
    assert weights_key("random") == "random:0" and weights_key("imagenet") == "imagenet"
    assert weights_key(str(file)).startswith("file:mine.weights.h5:sha256:")
    assert weights_key("imagenet", spec) == f"file:model.keras:sha256:{spec.file_digest}"  # the model's own
    for weights, model, said in [("weights.bin", None, "Expected imagenet, random"),
                                 (str(tmp_path / "none.h5"), None, "Weights file not found"),
                                 ("random:x", None, "integer seed"), ("random:3", spec, "is for built-in models")]:
        with pytest.raises(WeightsRequestError, match=said):
            weights_key(weights, model)


def test_submit_with_weights_queues_for_those_weights_only(run, photos, store, settings, tmp_path):
    job = run("submit", str(photos), "--weights", "random:7").stdout.strip()
    assert [r["job"] for r in waiting_in(store, weights="random:7")] == [job]
    assert waiting_in(store) == []  # not in the model's queue, where any worker of resnet50 would take it
    assert store.status(job).params["weights"] == "random:7" and store.status(job).weights == "random:7"
    assert {m["weights"] for m in store.iter_batches(job)} == {"random:7"}
    publish(refs(store.unfinished_batches(job)), settings)  # `imgq requeue`, the reconciler
    assert len(waiting_in(store, weights="random:7")) == 2 and waiting_in(store) == []

    plain = run("submit", str(photos)).stdout.strip()  # no weights asked: any worker of the model, as before
    assert [r["job"] for r in waiting_in(store)] == [plain] and "weights" not in store.status(plain).params
    assert "weights" not in store.batch(plain, 0)
    asked = run("submit", str(photos), env={"IMGQ_JOB_WEIGHTS": "random:3"}).stdout.strip()
    assert store.status(asked).weights == "random:3"  # unless a setting asks for weights

    refused = run("submit", str(photos), "--weights", str(tmp_path / "missing.weights.h5"))
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert len(refused.stderr.strip().splitlines()) == 1 and "Weights file not found" in refused.stderr


def test_status_says_a_job_waits_for_a_worker_with_its_weights(run, photos, store):
    alive(store, RANDOM_1)
    job = run("submit", str(photos), "--weights", "random:7").stdout.strip()
    said = f"waits for a worker of model resnet50 with weights random:7; live workers of resnet50 have {RANDOM_1}"
    assert f"waiting: {said}" in run("status", job).stdout
    assert json.loads(run("status", job, "--json").stdout)["waiting"].startswith(said)
    assert said in run("status", "--workers").stdout
    assert "1 batch queued" in run("status", "--workers").stdout  # counted in its weights' queue
    assert "weights random:7" in run("status").stderr
    alive(store, "random:7 (untrained: labels are meaningless)", name="w2")
    assert "waiting" not in run("status", job).stdout


def test_the_reconciler_leaves_a_job_whose_weights_no_live_worker_has(settings, store, photos):
    """Its messages wait in its weights' queue: the stall rule leaves it alone while no worker has its weights
    (queueing them again would pile up copies), and applies again once one has them."""
    from imgq.jobs import submit as submission

    deliveries = Deliveries(store.redis, store.keys)
    paths = sorted(str(p) for p in photos.iterdir())
    job = submission.submit(paths, settings=settings, store=store, batch_size=5, weights="random:7").job
    store.redis.delete(store.keys.model_queue(queue_name(settings, MODEL_NAME, "random:7")))  # and even lost
    alive(store, RANDOM_1)
    runtime = SimpleNamespace(store=store, settings=settings, deliveries=deliveries)
    assert reconcile(runtime, now=time.time() + settings.visibility_timeout + 1) == 0
    alive(store, "random:7 (untrained: labels are meaningless)", name="w2")
    assert reconcile(runtime, now=time.time() + settings.visibility_timeout + 1) == 1
    assert [r["job"] for r in waiting_in(store, weights="random:7")] == [job]


def test_a_schedule_asks_its_ticks_jobs_for_its_weights(run, photos, store, settings):
    added = run("schedule", "add", "photos", str(photos), "--every", "1h", "--weights", "random:7")
    assert added.exit_code == 0, added.output
    ran = tick("photos", settings=settings, store=store, trigger="manual")
    assert store.status(ran["job"]).weights == "random:7"
    assert [r["job"] for r in waiting_in(store, weights="random:7")] == [ran["job"]]
