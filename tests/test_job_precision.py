"""A job says which precision it asks for (fp32, bf16, int8; any by default): its message and record carry it, its
batches wait in the queue of that precision, only a worker serving jobs at it takes them, `imgq status` says why
a job waits, and an INT8 worker's first images, classified in fp32 while it calibrates, are said to be. The first
part reads queues and heartbeats in a real Redis; the last runs real workers (one fp32 worker, and the INT8
worker `imgq classify --precision int8` starts)."""

from __future__ import annotations

import base64
import json
import threading
import time
from types import SimpleNamespace

import pytest

from imgq.celery_config import queue_name, worker_queues
from imgq.contract import (
    MODEL_NAME,
    BatchMessage,
    BatchRef,
    Heartbeat,
    MessageError,
    model_queue,
    ok_record,
    serves_precision,
)
from imgq.jobs.deliveries import Deliveries
from imgq.jobs.queue import publish, refs
from imgq.results.store import ResultStore, delete_namespace
from imgq.schedules.tick import tick
from tests import imagegen
from tests.conftest import make_settings
from tests.processes import imgq_cli, start_worker, wait_for_workers, wait_until_done
from worker.reconcile import reconcile

RANDOM_0 = "random:0 (untrained: labels are meaningless)"  # the weights id of IMGQ_WEIGHTS=random (make_settings)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        imagegen.save(folder / f"{i}.png", size=(16, 16), seed=i)
    return folder


def alive(store, job_precision: str, name: str = "w1", note: str = "", **fields) -> None:
    """The heartbeat of a live resnet50 worker with random weights serving jobs at ``job_precision``."""
    beat = Heartbeat(hostname=name, pid=7, host="h", weights=RANDOM_0, pool="threads", sent_at=time.time(),
                     precision=job_precision or "fp32", job_precision=job_precision, precision_note=note, **fields)
    store.send_heartbeat(f"{name}:7", beat, ttl=60)


def waiting_in(store, precision: str = "", weights: str = "", model: str = MODEL_NAME) -> list[dict]:
    """The batch references waiting in the queue of ``model`` with ``weights`` at ``precision``."""
    raw = store.redis.lrange(store.keys.model_queue(model_queue(store.keys.ns, model, weights, precision)), 0, -1)
    return [json.loads(base64.b64decode(json.loads(r)["body"]))[0][0] for r in reversed(raw)]


def test_a_message_says_which_precision_and_one_without_means_any():
    message = BatchMessage(job="j1", batch=0, images=((0, "/a.jpg"),), top_k=5, precision="int8")
    assert message.to_dict()["precision"] == "int8" and BatchMessage.from_dict(message.to_dict()) == message
    old = BatchMessage("j1", 0, ((0, "/a.jpg"),), 5).to_dict()
    assert "precision" not in old and BatchMessage.from_dict(old).precision == ""  # as every message before
    for bad in ("int9", "INT8", "any", 8, None, "int8\n"):
        with pytest.raises(MessageError, match="precision must be one of fp32, bf16, int8"):
            BatchMessage.from_dict({**message.to_dict(), "precision": bad})
    assert serves_precision("int8", "") and serves_precision("int8", "int8") and serves_precision("", "")
    assert not serves_precision("fp32", "int8") and not serves_precision("int8", "fp32")
    assert not serves_precision("", "int8")  # a worker older than jobs asking for one takes only the others
    old_beat = Heartbeat.from_dict({"hostname": "w", "weights": "imagenet", "precision": "int8"})
    assert old_beat.serves(MODEL_NAME) and not old_beat.serves(MODEL_NAME, "", "int8")
    assert Heartbeat("w", job_precision="int8").serves(MODEL_NAME, "", "int8")


def test_each_precision_has_its_queue_and_a_worker_consumes_those_of_what_it_serves(settings):
    ns = settings.namespace
    assert queue_name(settings) == ns and queue_name(settings, MODEL_NAME, "", "int8") == f"{ns}+int8"
    weights = queue_name(settings, "convnexttiny", "imagenet")
    assert queue_name(settings, "convnexttiny", "imagenet", "fp32") == f"{weights}+fp32"
    imagenet = queue_name(settings, MODEL_NAME, "imagenet")
    assert worker_queues(settings, MODEL_NAME, "imagenet", "int8") == (ns, imagenet, f"{ns}+int8", f"{imagenet}+int8")
    assert worker_queues(settings, MODEL_NAME, "imagenet") == (ns, queue_name(settings, MODEL_NAME, "imagenet"))


def test_submit_with_a_precision_queues_for_it_only(run, photos, store, settings):
    job = run("submit", str(photos), "--precision", "int8").stdout.strip()
    assert [r["job"] for r in waiting_in(store, "int8")] == [job]
    assert waiting_in(store) == [] and waiting_in(store, "fp32") == []
    assert store.status(job).precision == "int8" and store.status(job).params["precision"] == "int8"
    assert {m["precision"] for m in store.iter_batches(job)} == {"int8"}
    publish(refs(store.unfinished_batches(job)), settings)  # `imgq requeue`, the reconciler: the same queue
    assert len(waiting_in(store, "int8")) == 2 and waiting_in(store) == []

    plain = run("submit", str(photos)).stdout.strip()  # any: the model's queue, as before
    assert [r["job"] for r in waiting_in(store)] == [plain] and "precision" not in store.status(plain).params
    assert "precision" not in store.batch(plain, 0)
    said_any = run("submit", str(photos), "--precision", "any").stdout.strip()
    assert store.status(said_any).precision == "" and len(waiting_in(store)) == 2
    by_env = run("submit", str(photos), env={"IMGQ_JOB_PRECISION": "fp32"}).stdout.strip()
    assert [r["job"] for r in waiting_in(store, "fp32")] == [by_env]
    both = run("submit", str(photos), "--precision", "bf16", "--weights", "random:3").stdout.strip()
    assert [r["job"] for r in waiting_in(store, "bf16", "random:3")] == [both]


@pytest.mark.parametrize("value", ["int9", "", "INT8", "0", "-1", "nan", "inf", "1e999", "8" * 400])
def test_an_unknown_precision_is_one_line_and_nothing_is_queued(run, photos, store, value):
    for command in (["submit", str(photos)], ["schedule", "add", "p", str(photos), "--every", "1h"]):
        result = run(*command, "--precision", value)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "Invalid value for '--precision'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "'any', 'fp32', 'bf16', 'int8'" in result.stderr or "any, fp32, bf16, int8" in result.stderr
    by_env = run("submit", str(photos), env={"IMGQ_JOB_PRECISION": value or "x"})
    assert by_env.exit_code != 0 and "Traceback" not in by_env.output
    assert "IMGQ_JOB_PRECISION" in by_env.stderr and len(by_env.stderr.strip().splitlines()) == 1
    assert store.active_jobs() == set() and waiting_in(store) == []


def test_a_job_asking_for_int8_cannot_dump_activations(run, photos, store):
    result = run("submit", str(photos), "--precision", "int8", "--activations", "avg_pool")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "INT8 workers dump activations from an fp32 pass" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and store.active_jobs() == set()


def test_status_says_a_job_waits_for_a_worker_at_its_precision(run, photos, store):
    alive(store, "fp32", note="fp32: int8 refused: INT8's top-1 agrees ...")
    job = run("submit", str(photos), "--precision", "int8").stdout.strip()
    said = ("waits: no live worker serves model resnet50 at int8; w1 serves jobs at fp32 (fp32: int8 refused: "
            "INT8's top-1 agrees ...)")
    assert f"waiting: {said} (start one: `imgq worker --precision int8`)" in run("status", job).stdout
    assert json.loads(run("status", job, "--json").stdout)["waiting"].startswith(said)
    workers = run("status", "--workers").stdout
    assert said in workers and "1 batch queued" in workers  # counted in its precision's queue
    assert "serves jobs at fp32 (fp32: int8 refused" in workers
    assert "No live worker serves model resnet50 at int8: its jobs that asked for it wait." in run("status").stderr
    assert "The job waits: no live worker serves model resnet50 at int8" in run("wait", job, "--timeout", "0.5").stderr
    alive(store, "", name="w0")  # a worker older than jobs asking for a precision
    assert "w0 serves only jobs that ask for no precision" in run("status", job).stdout
    alive(store, "int8", name="w2")
    assert "waiting" not in run("status", job).stdout


def test_status_says_when_a_job_asking_int8_got_fp32_records(run, photos, store):
    """An INT8 worker calibrating on its first images classifies them in fp32: the records say so, and the
    status too."""
    job = run("submit", str(photos), "--precision", "int8").stdout.strip()
    made = [ok_record(job, i, str(photos / f"{i}.png"), [{"wnid": "n01440764", "label": "tench", "score": 0.9}],
                      weights=RANDOM_0, precision=p, runtime="openvino", worker="w2")
            for i, p in [(0, "fp32"), (1, "fp32"), (2, "int8")]]
    store.record_results(job, made)
    assert store.status(job).precisions == ("fp32", "int8") and store.status(job).other_precisions == ("fp32",)
    shown = run("status", job).stdout
    assert "note: records made in fp32, not int8: an INT8 worker classifies the first images" in shown
    assert json.loads(run("status", job, "--json").stdout)["precisions"] == ["fp32", "int8"]
    plain = run("submit", str(photos)).stdout.strip()
    store.record_results(plain, [dataclass_replace(made[0], job=plain)])
    assert "note:" not in run("status", plain).stdout  # a job asking for no precision takes any


def dataclass_replace(record, **changes):
    import dataclasses

    return dataclasses.replace(record, **changes)


def test_the_reconciler_leaves_a_job_whose_precision_no_live_worker_serves(settings, store, photos):
    from imgq.jobs import submit as submission

    deliveries = Deliveries(store.redis, store.keys)
    paths = sorted(str(p) for p in photos.iterdir())
    job = submission.submit(paths, settings=settings, store=store, batch_size=5, precision="int8").job
    store.redis.delete(store.keys.model_queue(queue_name(settings, MODEL_NAME, "", "int8")))  # and even lost
    alive(store, "fp32")
    runtime = SimpleNamespace(store=store, settings=settings, deliveries=deliveries)
    assert reconcile(runtime, now=time.time() + settings.visibility_timeout + 1) == 0
    alive(store, "int8", name="w2")
    assert reconcile(runtime, now=time.time() + settings.visibility_timeout + 1) == 1
    assert [r["job"] for r in waiting_in(store, "int8")] == [job]


def test_a_schedule_asks_its_ticks_jobs_for_its_precision(run, photos, store, settings):
    added = run("schedule", "add", "photos", str(photos), "--every", "1h", "--precision", "fp32")
    assert added.exit_code == 0, added.output
    assert "precision fp32" in run("schedule", "show", "photos").output
    ran = tick("photos", settings=settings, store=store, trigger="manual")
    assert store.status(ran["job"]).precision == "fp32"
    assert [r["job"] for r in waiting_in(store, "fp32")] == [ran["job"]]


# -- what a worker serves jobs at, and the queues that follow it ----------------------------------------------

def calibrating():
    """An INT8 runtime calibrating on its first images, without a model (only its state is read)."""
    from worker.runtimes.int8_serving import CalibratingOnFirstImages

    fp32 = SimpleNamespace(precision="fp32")
    return CalibratingOnFirstImages(fp32, lambda *a, **k: None, 8)  # type: ignore[arg-type]


def test_an_int8_runtime_serves_int8_jobs_while_it_calibrates_and_fp32_once_it_refused():
    runtime = calibrating()
    assert runtime.job_precision == "int8" and runtime.precision_may_change  # its first passes fp32: said so
    runtime._thread = threading.Thread(target=lambda: None)
    runtime._thread.start()
    runtime._thread.join()
    assert runtime.job_precision == "fp32" and not runtime.precision_may_change  # refused: fp32 for good
    ready = calibrating()
    ready._ready = SimpleNamespace(precision="int8")
    assert ready.job_precision == "int8" and not ready.precision_may_change


class FakeConsumer:
    """What worker/queues.py uses of Celery's consumer: its app's queues, add/cancel, its event loop's timer."""

    def __init__(self, names):
        self.app = SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from=dict.fromkeys(names))))
        self.timer = SimpleNamespace(call_repeatedly=self._repeat, cancel=self._cancel)
        self.looks: list = []
        self.cancelled_timer = False

    def _repeat(self, seconds, function):
        self.looks.append(function)
        return "entry"

    def _cancel(self, entry):
        self.cancelled_timer = entry == "entry"

    def add_task_queue(self, name, **_):
        self.app.amqp.queues.consume_from[name] = None

    def cancel_task_queue(self, name):
        del self.app.amqp.queues.consume_from[name]


def test_a_worker_that_refuses_int8_moves_to_the_fp32_queues(settings):
    from worker import queues

    runtime = calibrating()
    int8 = worker_queues(settings, MODEL_NAME, "imagenet", "int8")
    consumer = FakeConsumer(int8)
    queues.follow(consumer, settings, MODEL_NAME, "imagenet", runtime, "int8")
    (look,) = consumer.looks
    look()
    assert set(consumer.app.amqp.queues.consume_from) == set(int8) and not consumer.cancelled_timer
    runtime._thread = threading.Thread(target=lambda: None)
    runtime._thread.start()
    runtime._thread.join()
    look()
    fp32 = worker_queues(settings, MODEL_NAME, "imagenet", "fp32")
    assert set(consumer.app.amqp.queues.consume_from) == set(fp32) and consumer.cancelled_timer
    settled = FakeConsumer(fp32)
    queues.follow(settled, settings, MODEL_NAME, "imagenet", SimpleNamespace(precision_may_change=False), "fp32")
    assert settled.looks == []  # a runtime that never changes is not watched


def test_the_queues_are_chosen_from_the_loaded_runtime_before_the_consumer_starts(settings):
    """Celery's own queue selection: an INT8 worker (no int8 queue before its load) whose INT8 was refused as it
    loaded consumes fp32's; one whose INT8 serves, int8's; never both."""
    from celery import Celery

    from imgq.celery_config import celery_config
    from worker import queues

    for served in ("fp32", "int8"):
        app = Celery("test", set_as_current=False)
        app.conf.update(celery_config(settings, MODEL_NAME, "imagenet", queues.expected(SimpleNamespace(
            precision="int8"))))  # type: ignore[arg-type]
        assert set(app.amqp.queues.consume_from) == set(worker_queues(settings, MODEL_NAME, "imagenet"))
        queues.choose(app, settings, MODEL_NAME, "imagenet", served)
        assert set(app.amqp.queues.consume_from) == set(worker_queues(settings, MODEL_NAME, "imagenet", served))


# -- real workers ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fp32_worker(redis_url, tmp_path_factory, parity):
    """A real fp32 worker with the parity weights, in a namespace of its own: ``(settings, worker process)``."""
    folder = tmp_path_factory.mktemp("fp32-worker")
    settings = make_settings(redis_url, folder, weights=parity[1], batch_size=4, precision="fp32")
    worker = start_worker(settings, "fp32", folder / "fp32.log")
    try:
        wait_for_workers(ResultStore.from_settings(settings), [worker])
        yield settings, worker
    finally:
        worker.stop()
        delete_namespace(redis_url, settings.namespace)


@pytest.mark.slow
def test_an_fp32_worker_takes_fp32_jobs_and_leaves_int8_ones(fp32_worker, parity):
    settings, worker = fp32_worker
    store = ResultStore.from_settings(settings)
    folder = str(parity[0][0].parent)
    asked = imgq_cli(settings, "submit", folder, "--precision", "int8").stdout.strip()
    # A batch of it in the model's queue (a producer or reconciler older than jobs asking for a precision): the
    # fp32 worker takes it, classifies nothing and sends it on to the queue of int8, where it waits.
    publish([BatchRef(asked, 0, MODEL_NAME)], settings)
    fp32 = imgq_cli(settings, "submit", folder, "--precision", "fp32").stdout.strip()
    wait_until_done(store, fp32, 300, [worker])
    assert {r.precision for r in store.iter_records(fp32)} == {"fp32"}
    queued = len(list(store.iter_batches(asked)))
    deadline = time.monotonic() + 60
    while len(waiting_in(store, "int8")) < queued + 1:  # the ones submit queued, and the one sent on
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(0.2)
    assert (f"Batch 0 of job {asked} asks for int8, and this worker serves jobs at fp32: sent to the queue of "
            "int8") in worker.output()
    assert store.status(asked).processed == 0 and store.status(asked).state == "queued"
    status = json.loads(imgq_cli(settings, "status", asked, "--json").stdout)
    assert status["waiting"].startswith("waits: no live worker serves model resnet50 at int8; fp32@")
    assert "serves jobs at fp32" in imgq_cli(settings, "status", "--workers").stdout
    imgq_cli(settings, "cancel", asked)


@pytest.mark.slow
def test_classify_asks_for_its_precision_and_starts_an_int8_worker_beside_an_fp32_one(fp32_worker, parity,
                                                                                        tmp_path):
    from tests.test_local_use import Running, classify_env, imgq_argv

    settings, worker = fp32_worker
    folder = str(parity[0][0].parent)
    env = {**classify_env(settings, IMGQ_RUNTIME="openvino"), "IMGQ_WEIGHTS": parity[1]}
    same = Running(imgq_argv("classify", folder, "--precision", "fp32", "-o", str(tmp_path / "fp32.jsonl")), env,
                   tmp_path)
    assert same.finish() == 0, same.text
    assert "Using the live worker" in same.text and "Started a worker" not in same.text
    int8 = Running(imgq_argv("classify", folder, "--precision", "int8", "--calibration", folder, "-o",
                             str(tmp_path / "int8.jsonl")), env, tmp_path)
    assert int8.finish(900) == 0, int8.text
    assert ("The live worker of model resnet50 serves jobs at fp32, not jobs at int8: starting one at int8."
            in int8.text), int8.text
    records = [json.loads(line) for line in (tmp_path / "int8.jsonl").read_text().splitlines()]
    assert len(records) == len(parity[0]) and {r["precision"] for r in records} == {"int8"}, \
        ([(r["image"], r["worker"], r["precision"]) for r in records], int8.text)
    assert not any(r["worker"].startswith("fp32@") for r in records) and "NOTE:" not in int8.text


@pytest.mark.slow
def test_an_int8_worker_that_refuses_on_its_first_images_moves_to_the_fp32_queues(redis_url, tmp_path):
    """A real INT8 worker calibrating on its first images, with near-tie weights (each picture's top-1 wins by
    1e-4: tests/weights.py), which it refuses once calibrated: the int8 job it calibrated on has fp32 records
    that say so, then the worker serves fp32 jobs, and a new int8 job waits for another worker."""
    from tests import weights as test_weights

    paths = test_weights.write_pictures(tmp_path / "pictures", 48)
    weights = test_weights.near_tie_weights(paths, tmp_path / "near-tie.weights.h5")
    settings = make_settings(redis_url, tmp_path, weights=str(weights), batch_size=8, precision="int8",
                             calibration_images=48)
    store = ResultStore.from_settings(settings)
    worker = start_worker(settings, "calibrating", tmp_path / "calibrating.log")
    try:
        wait_for_workers(store, [worker])
        (beat,) = store.workers()
        assert beat.job_precision == "int8" and "int8 after calibrating on the first 48 images" in beat.precision_note
        folder = str(tmp_path / "pictures")
        first = imgq_cli(settings, "submit", folder, "--precision", "int8").stdout.strip()
        wait_until_done(store, first, 600, [worker])
        assert {r.precision for r in store.iter_records(first)} == {"fp32"}  # what it calibrated on
        assert "note: records made in fp32, not int8" in imgq_cli(settings, "status", first).stdout
        deadline = time.monotonic() + 600
        while (beat := store.workers()[0]).job_precision != "fp32":  # quantized, measured, refused
            assert time.monotonic() < deadline and worker.alive(), worker.output()[-3000:]
            time.sleep(0.5)
        assert "IMGQ_INT8_MIN_AGREEMENT=0.99" in beat.precision_note
        fp32 = imgq_cli(settings, "submit", folder, "--precision", "fp32").stdout.strip()
        wait_until_done(store, fp32, 300, [worker])  # the fp32 queues are consumed now
        assert {r.precision for r in store.iter_records(fp32)} == {"fp32"}
        waiting = imgq_cli(settings, "submit", folder, "--precision", "int8").stdout.strip()
        said = json.loads(imgq_cli(settings, "status", waiting, "--json").stdout)["waiting"]
        assert said.startswith("waits: no live worker serves model resnet50 at int8; calibrating@"), said
        assert "serves jobs at fp32 (fp32: INT8's top-1 agrees" in said
        assert "Serving jobs at fp32 from now on" in worker.output()
        imgq_cli(settings, "cancel", waiting)
    finally:
        worker.stop()
        delete_namespace(redis_url, settings.namespace)
