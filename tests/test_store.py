"""The results store's contract (see imgq/store.py), against a real Redis."""

import time

import pytest

from imgq.contract import Heartbeat, error_record, ok_record
from imgq.store import JobNotFound, ResultStore

TOP = [{"wnid": "n01440764", "label": "tench", "score": 0.9}]


def ok(job, image):
    return ok_record(job, image, f"/img/{image}.jpg", TOP, weights="random:0")


def failed(job, image):
    return error_record(job, image, f"/img/{image}.jpg", "corrupt", "truncated", weights="random:0")


def commit(store: ResultStore, job="job1", total=4, batch_size=2):
    messages = [{"v": 1, "job": job, "batch": b, "top_k": 1,
                 "images": [[i, f"/img/{i}.jpg"] for i in range(s, min(s + batch_size, total))]}
                for b, s in enumerate(range(0, total, batch_size))]
    store.stage_batches(job, messages)
    store.commit_job(job, name="a job", total=total, batches=len(messages), params={"top_k": 1})
    return messages


class TestResultStoreContract:
    def test_staged_job_is_invisible_until_committed_and_expires(self, store):
        store.stage_batches("job1", [{"batch": 0}])
        with pytest.raises(JobNotFound):
            store.status("job1")
        assert store.list_jobs() == []
        assert 0 < store.redis.ttl(store.keys.batches("job1")) <= 24 * 3600

    def test_commit_makes_the_job_visible_and_keeps_its_batches(self, store):
        messages = commit(store)
        status = store.status("job1")
        assert (status.name, status.total, status.processed, status.state) == ("a job", 4, 0, "queued")
        assert status.params == {"top_k": 1}
        assert list(store.iter_batches("job1")) == messages
        assert store.redis.ttl(store.keys.batches("job1")) == -1
        assert [s.id for s in store.list_jobs()] == ["job1"]

    def test_one_record_per_image_and_redelivery_overwrites(self, store):
        commit(store)
        store.record_results("job1", [ok("job1", 0), failed("job1", 1)])
        store.record_results("job1", [ok("job1", 0), failed("job1", 1)])  # the same batch again
        status = store.status("job1")
        assert (status.processed, status.failed, status.ok) == (2, 1, 1)
        assert [r["image"] for r in store.iter_results("job1")] == [0, 1]

    def test_a_redelivered_success_replaces_an_error(self, store):
        commit(store)
        store.record_results("job1", [failed("job1", 1)])
        store.record_results("job1", [ok("job1", 1)])
        status = store.status("job1")
        assert (status.processed, status.failed) == (1, 0)
        assert [r["status"] for r in store.iter_results("job1")] == ["ok"]

    def test_job_is_done_when_every_image_has_a_record(self, store):
        commit(store, total=3)
        store.mark_started("job1")
        assert store.status("job1").state == "running"
        store.record_results("job1", [ok("job1", 2), ok("job1", 0)])
        assert store.status("job1").finished_at is None
        store.record_results("job1", [failed("job1", 1)])
        status = store.status("job1")
        assert status.state == "done" and status.finished_at is not None
        assert status.rate > 0 and status.eta is None

    def test_a_done_job_has_a_fixed_rate_even_before_finished_at_is_written(self, store):
        commit(store, total=1)
        store.mark_started("job1")
        store.record_results("job1", [ok("job1", 0)])
        store.redis.hdel(store.keys.job("job1"), "finished_at")  # the moment between the two writes
        first = store.status("job1")
        time.sleep(0.05)
        assert first.state == "done" and store.status("job1").rate == first.rate

    def test_results_come_in_submission_order(self, store):
        commit(store, total=2500, batch_size=500)
        store.record_results("job1", [ok("job1", i) for i in reversed(range(2500))])
        assert [r["image"] for r in store.iter_results("job1")] == list(range(2500))

    def test_cancel_keeps_written_records(self, store):
        commit(store)
        store.record_results("job1", [ok("job1", 0)])
        status = store.cancel("job1")
        assert status.state == "cancelled" and store.is_cancelled("job1")
        assert [r["image"] for r in store.iter_results("job1")] == [0]

    def test_cancelling_a_finished_job_changes_nothing(self, store):
        commit(store, total=1)
        store.record_results("job1", [ok("job1", 0)])
        status = store.cancel("job1")
        assert status.state == "done" and status.cancelled_at is None and not store.is_cancelled("job1")

    def test_delete_forgets_everything_of_the_job(self, store):
        commit(store)
        commit(store, job="other")
        store.record_results("job1", [ok("job1", 0), failed("job1", 1)])
        store.delete("job1")
        with pytest.raises(JobNotFound):
            store.status("job1")
        assert [s.id for s in store.list_jobs()] == ["other"]
        assert sorted(store.redis.keys(f"{store.keys.ns}:*")) == sorted(
            [store.keys.jobs, store.keys.active, store.keys.job("other"), store.keys.batches("other")])
        assert store.active_jobs() == {"other"}

    def test_unfinished_batches_are_those_with_an_image_lacking_a_record(self, store):
        messages = commit(store, total=5, batch_size=2)
        store.record_results("job1", [ok("job1", 0), ok("job1", 1), failed("job1", 2)])
        assert list(store.unfinished_batches("job1")) == messages[1:]

    def test_active_jobs_are_those_neither_done_nor_cancelled(self, store):
        for job in ("a", "b", "c"):
            commit(store, job=job, total=1)
        store.record_results("a", [ok("a", 0)])
        store.cancel("b")
        assert store.active_jobs() == {"c"}

    def test_missing_images_and_single_batches(self, store):
        messages = commit(store, total=3)
        store.record_results("job1", [ok("job1", 1)])
        assert store.missing("job1", [0, 1, 2]) == [0, 2]
        assert store.batch("job1", 1) == messages[1] and store.batch("job1", 9) is None
        assert store.status("job1").last_record_at is not None

    def test_unknown_job_raises(self, store):
        for call in (store.status, store.cancel, store.delete, lambda j: list(store.iter_results(j))):
            with pytest.raises(JobNotFound, match="nope"):
                call("nope")

    def test_list_jobs_newest_first(self, store):
        for job in ("a", "b", "c"):
            commit(store, job=job)
            time.sleep(0.01)
        assert [s.id for s in store.list_jobs(limit=2)] == ["c", "b"]

    def test_workers_are_read_from_their_heartbeats(self, store):
        store.send_heartbeat("w1:1", Heartbeat(hostname="w1", pid=1, host="h", in_hand=(("j", 3),)), ttl=10)
        assert store.workers() == [Heartbeat(hostname="w1", pid=1, host="h", in_hand=(("j", 3),))]
        assert store.heartbeat("w1:1").holds("j", 3) and store.heartbeat("w2:1") is None
