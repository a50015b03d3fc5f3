"""imgq/jobs/deliveries.py and worker/batches/isolation.py against a real Redis: what counts as a lost delivery, when a
suspect counts, and that a worker_crashed record never replaces a stored one."""

from __future__ import annotations

import json
import threading
import time

import pytest

from imgq.jobs.deliveries import Deliveries, NoSuchJob
from tests.jobs import commit_job
from worker.batches.isolation import DecodeLock

JOB = "job1"


@pytest.fixture(autouse=True)
def job(store):
    """The job the deliveries belong to: a delivery writes only while its job exists."""
    commit_job(store, JOB, ["/a.png", "/b.png"], batch_size=1)


def beat(store, worker_id: str, started_at: float, sent_at: float | None = None) -> None:
    sent_at = time.time() if sent_at is None else sent_at
    store.redis.set(store.keys.worker(worker_id), json.dumps({"started_at": started_at, "sent_at": sent_at}), ex=30)


def test_finished_deliveries_are_not_lost_however_often_requeued(store):
    deliveries = Deliveries(store.redis, store.keys)
    for n in range(1, 6):  # `imgq requeue` five times, each delivery finishing
        assert deliveries.begin(JOB, 0, "w@a:1") == (n, 0)
        deliveries.finish(JOB, 0)
    assert deliveries.attempts(JOB) == {0: 5}


def test_a_delivery_whose_worker_vanished_is_lost_and_a_live_holders_is_not(store):
    deliveries = Deliveries(store.redis, store.keys)
    beat(store, "w@a:1", 1.0)
    deliveries.begin(JOB, 0, "w@a:1")  # never finishes...
    assert deliveries.begin(JOB, 0, "w@b:2") == (2, 0)  # ...but its worker is alive: a duplicate
    store.redis.delete(store.keys.worker("w@a:1"), store.keys.worker("w@b:2"))
    assert deliveries.begin(JOB, 0, "w@c:3") == (3, 2)  # both vanished without finishing


def test_a_suspect_counts_only_once_the_process_that_set_it_is_gone(store):
    deliveries = Deliveries(store.redis, store.keys)
    beat(store, "w@a:1", 100.0)
    entry = deliveries.suspect(JOB, 7, "w@a:1", 100.0)
    assert not deliveries.died_on(deliveries.suspects(JOB)[7], 2.0)  # decoding it right now, alive
    beat(store, "w@a:1", 100.0, sent_at=time.time() - 2.5)  # its key lives on, but it stopped beating: dead
    assert deliveries.died_on(deliveries.suspects(JOB)[7], 2.0)
    beat(store, "w@a:1", 200.0)  # a restarted container: same host name and pid, another process
    assert deliveries.died_on(deliveries.suspects(JOB)[7], 2.0)
    store.redis.delete(store.keys.worker("w@a:1"))
    assert deliveries.died_on(deliveries.suspects(JOB)[7], 2.0)
    other = deliveries.suspect(JOB, 7, "w@b:2", 300.0)  # another delivery takes the image over
    deliveries.clear_suspect(JOB, 7, entry)  # the first one's clear leaves the second's entry alone
    assert json.dumps(deliveries.suspects(JOB)[7]) == other
    deliveries.clear_suspect(JOB, 7, other)
    assert deliveries.suspects(JOB) == {}




def until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.005)


def test_an_exclusive_decode_runs_alone_and_is_not_starved():
    lock, events, inside, release = DecodeLock(), [], threading.Event(), threading.Event()

    def shared(name, hold: threading.Event | None):
        with lock.shared():
            events.append(f"{name}+")
            inside.set()
            if hold is not None:
                hold.wait(10)
            events.append(f"{name}-")

    first = threading.Thread(target=shared, args=("s1", release))  # holds the lock until released
    first.start()
    inside.wait()

    def exclusive():
        with lock.exclusive():
            events.append("x+")
            time.sleep(0.1)
            events.append("x-")

    x = threading.Thread(target=exclusive)
    x.start()
    # Each step waits for the one before it, as the lock sees it: a fixed pause let a busy machine start s2
    # before x was waiting, and s2 then rightly went first.
    until(lambda: lock._waiting == 1, "x to wait for s1")
    late = threading.Thread(target=shared, args=("s2", None))  # arrives while x waits: goes after x
    late.start()
    until(lambda: len(lock._cond._waiters) == 2, "s2 to wait behind x")
    release.set()
    for t in (first, x, late):
        t.join(10)
    assert events == ["s1+", "s1-", "x+", "x-", "s2+", "s2-"]


def test_a_deleted_jobs_deliveries_write_nothing(store):
    from tests.jobs import commit_job

    deliveries = Deliveries(store.redis, store.keys)
    commit_job(store, JOB, ["/a.png", "/b.png"], batch_size=1)
    deliveries.begin(JOB, 0, "w@a:1")
    store.delete(JOB)
    deliveries.finish(JOB, 0)  # the worker ends the batch it held when the job was deleted
    deliveries.suspect(JOB, 1, "w@a:1", 1.0)
    with pytest.raises(NoSuchJob):
        deliveries.begin(JOB, 1, "w@a:1")
    assert store.redis.keys(f"{store.keys.ns}:*") == []


def test_a_publish_after_a_delete_leaves_no_key_and_after_a_cancel_expires_with_the_job(settings, store):
    """A publish counts the job's messages (``published``): counted for a job that is gone, the count made a
    new attempts hash without a TTL, kept for ever; counted after a job finished, one that outlived the job."""
    from imgq.contract import BatchRef
    from imgq.jobs.queue import publish

    store.delete(JOB)
    publish([BatchRef(JOB, 0)], settings)  # `imgq requeue` racing a delete, a tick's re-queue, ...
    assert store.redis.exists(store.keys.attempts(JOB)) == 0
    store.stage_batches("late", [{"v": 1, "job": "late", "batch": 0, "top_k": 1, "images": [[0, "/a.png"]]}])
    store.commit_job("late", name="late", total=1, batches=1, params={"top_k": 1}, retention=60)
    store.cancel("late")  # before its batches were published: its retention runs
    publish([BatchRef("late", 0)], settings)
    assert Deliveries(store.redis, store.keys).waiting("late") == 1
    assert 0 < store.redis.ttl(store.keys.attempts("late")) <= 60
