"""worker/reconcile.py's stall rule, per job, against a real Redis and a real queue (no worker consumes it)."""

from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace

import pytest

from imgq.celery_config import queue_name
from imgq.contract import MODEL_NAME, BatchRef, Heartbeat
from imgq.jobs import submit as enqueue
from imgq.jobs.deliveries import Deliveries
from imgq.jobs.queue import publish
from imgq.results.store import ResultStore
from tests import imagegen
from tests.processes import imgq_cli
from worker.reconcile import reconcile


def _job(settings, store, folder, count, model=MODEL_NAME):
    folder.mkdir()
    paths = [str(imagegen.save(folder / f"{i}.png", size=(32, 32), seed=i)) for i in range(count)]
    return enqueue.submit(paths, settings=settings, store=store, batch_size=4, model=model).job


def _alive(store, model=MODEL_NAME, name="w@a"):
    """A live worker's heartbeat serving ``model``: the reconciler runs in a worker, and judges only the jobs
    whose model some live worker serves."""
    store.send_heartbeat(f"{name}:1", Heartbeat(hostname=name, model=model), 60)


def test_a_failed_jobs_batches_are_queued_again_behind_another_jobs_backlog(settings, store, tmp_path):
    deliveries = Deliveries(store.redis, store.keys)
    failed = _job(settings, store, tmp_path / "failed", 8)  # 2 batches
    store.redis.delete(store.keys.kombu_queue)
    for batch in (0, 1):  # each taken by a worker whose task then failed: begun, finished, no record, acked
        deliveries.begin(failed, batch, "w@a:1")
        deliveries.finish(failed, batch)
    backlog = _job(settings, store, tmp_path / "backlog", 4)
    publish([BatchRef(backlog, 0)] * 50, settings)  # another job's backlog stays in the queue
    runtime = SimpleNamespace(store=store, settings=settings, deliveries=deliveries)
    _alive(store)
    later = time.time() + settings.reconcile_seconds + 1
    assert deliveries.waiting(failed) == 0 and deliveries.waiting(backlog) == 51
    assert reconcile(runtime, now=later) == 2  # the failed job's two batches, the queue notwithstanding
    queued = store.redis.lrange(store.keys.kombu_queue, 0, -1)
    assert sum(failed in m for m in queued) == 2  # kombu's JSON envelope holds the reference as given
    assert deliveries.waiting(failed) == 2  # now waiting: the next reconcile leaves them alone
    assert reconcile(runtime, now=later) == 0


def test_a_job_whose_messages_vanished_before_any_worker_is_queued_again(settings, store, tmp_path):
    """Popped by kombu and lost before any worker began it (as when Redis refuses kombu's write of it as
    unacknowledged, during an OOM): with the queue empty it is queued again after reconcile_seconds; behind
    another job's backlog, the count cannot tell, and after a whole visibility timeout."""
    deliveries = Deliveries(store.redis, store.keys)
    _job(settings, store, tmp_path / "vanished", 4)
    store.redis.delete(store.keys.kombu_queue)  # dropped before any worker began it
    runtime = SimpleNamespace(store=store, settings=settings, deliveries=deliveries)
    _alive(store)
    assert reconcile(runtime, now=time.time() + settings.reconcile_seconds + 1) == 1
    store.redis.delete(store.keys.kombu_queue)  # lost again, now behind another job's backlog
    backlog = _job(settings, store, tmp_path / "backlog", 4)
    publish([BatchRef(backlog, 0)] * 5, settings)
    assert reconcile(runtime, now=time.time() + settings.reconcile_seconds + 1) == 0
    assert reconcile(runtime, now=time.time() + settings.visibility_timeout + 1) >= 1


def test_with_the_results_on_another_redis_the_queue_is_read_from_the_broker(settings, server, tmp_path):
    """IMGQ_RESULTS_URL on a second server (two real servers): the stall rule and `status --workers` read the
    queue's depth where the queue is. Read from the results store (no queue there: 0), every job waiting
    behind another's backlog looked lost and was queued again every period."""
    settings = dataclasses.replace(settings, results_url=server())
    store = ResultStore.from_settings(settings)
    deliveries = Deliveries(store.redis, store.keys)
    waiting = _job(settings, store, tmp_path / "waiting", 4)
    backlog = _job(settings, store, tmp_path / "backlog", 4)
    publish([BatchRef(backlog, 0)] * 20, settings)
    runtime = SimpleNamespace(store=store, settings=settings, deliveries=deliveries)
    assert deliveries.waiting(waiting) == 1
    assert reconcile(runtime, now=time.time() + settings.reconcile_seconds + 1) == 0  # all wait their turn
    assert store.redis.exists(store.keys.kombu_queue) == 0  # the results server holds no queue
    assert store.queue_depth() == 22
    shown = imgq_cli(settings, "status", "--workers").stdout.splitlines()
    assert shown[0] == "22 batches queued; 0 workers alive; 2 jobs in flight."


def test_an_active_job_without_its_hash_does_not_stop_the_others(settings, store, tmp_path):
    """An id in the active set whose job hash is gone (evicted; deleted during a pass) made every reconcile
    pass fail with JobNotFound: now it is skipped and dropped, and the other jobs are reconciled."""
    deliveries = Deliveries(store.redis, store.keys)
    job = _job(settings, store, tmp_path / "lost", 4)
    store.redis.delete(store.keys.kombu_queue)  # its one message lost
    store.redis.sadd(store.keys.active, "evicted1", "evicted2")
    _alive(store)
    runtime = SimpleNamespace(store=store, settings=settings, deliveries=deliveries)
    assert reconcile(runtime, now=time.time() + settings.reconcile_seconds + 1) == 1
    assert store.active_jobs() == {job}


def test_a_job_whose_queueing_failed_is_queued_again_after_the_reconcile_period_behind_a_backlog(
        settings, store, server, tmp_path):
    """Publishing counts a job's messages before sending them: when sending failed (here, a broker that takes
    connections and refuses LPUSH), the count said they waited, and behind another job's backlog the job
    waited a whole visibility timeout (an hour) while QueueingFailed promised IMGQ_RECONCILE_SECONDS."""
    refusing = dataclasses.replace(settings, broker_url=server("--user", "default", "on", "nopass", "~*", "&*",
                                                               "+@all", "-lpush"),
                                   results_url=settings.effective_results_url)
    with pytest.raises(enqueue.QueueingFailed) as failed:
        _job(refusing, store, tmp_path / "failed", 8)  # 2 batches, counted, none sent
    job = failed.value.job
    backlog = _job(settings, store, tmp_path / "backlog", 4)
    publish([BatchRef(backlog, 0)] * 20, settings)
    deliveries = Deliveries(store.redis, store.keys)
    _alive(store)
    runtime = SimpleNamespace(store=store, settings=settings, deliveries=deliveries)
    assert reconcile(runtime, now=time.time() + settings.reconcile_seconds / 2) == 0  # not before the period
    later = time.time() + settings.reconcile_seconds + 1
    assert reconcile(runtime, now=later) == 2
    assert sum(job in m for m in store.redis.lrange(store.keys.kombu_queue, 0, -1)) == 2
    assert deliveries.waiting(job) == 2  # counted right now: its two messages wait their turn
    assert reconcile(runtime, now=later) == 0


def test_a_lost_batch_goes_back_to_its_models_queue(settings, store, tmp_path):
    """A batch lost by a dead worker of model X is queued again on X's queue, by whichever worker reconciles
    (here one of resnet50): never on another model's queue."""
    deliveries = Deliveries(store.redis, store.keys)
    job = _job(settings, store, tmp_path / "x", 4, model="efficientnetv2b0")
    x_queue = store.keys.model_queue(queue_name(settings, "efficientnetv2b0"))
    assert store.redis.llen(x_queue) == 1 and store.queue_depth() == 0
    store.redis.delete(x_queue)
    deliveries.begin(job, 0, "dead@b:1")  # held by a worker whose heartbeat is gone
    _alive(store)
    runtime = SimpleNamespace(store=store, settings=settings, deliveries=deliveries)
    assert reconcile(runtime, now=time.time() + 2 * settings.heartbeat_seconds + 1) == 1
    assert store.queue_depth("efficientnetv2b0") == 1 and store.queue_depth() == 0


def test_a_job_whose_model_no_live_worker_serves_waits_instead_of_being_queued_again(settings, store, tmp_path):
    """No worker of its model is alive: its messages wait in its model's queue, and the stall rule leaves it
    alone (queueing them again every visibility timeout would only pile up copies); once a worker of the model
    is alive, the rule applies to it again."""
    deliveries = Deliveries(store.redis, store.keys)
    job = _job(settings, store, tmp_path / "absent", 4, model="convnexttiny")
    store.redis.delete(store.keys.model_queue(queue_name(settings, "convnexttiny")))  # and even lost
    _alive(store)  # a worker of resnet50 only
    runtime = SimpleNamespace(store=store, settings=settings, deliveries=deliveries)
    assert reconcile(runtime, now=time.time() + settings.visibility_timeout + 1) == 0
    _alive(store, "convnexttiny", name="x@b")
    assert reconcile(runtime, now=time.time() + settings.visibility_timeout + 1) == 1
    assert store.queue_depth("convnexttiny") == 1 and deliveries.waiting(job) >= 1
