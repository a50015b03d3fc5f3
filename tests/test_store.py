"""The results store's contract (see imgq/results/store.py), against a real Redis."""

import time

import pytest

from imgq.contract import Heartbeat, error_record, ok_record
from imgq.results.store import JobNotFound, ResultStore

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
        assert status.rate is None and status.eta is None  # done in less than MIN_RATE_SECONDS: no rate

    def test_a_rate_is_given_only_over_a_meaningful_span(self, store):
        commit(store, total=4)
        store.mark_started("job1")
        store.record_results("job1", [ok("job1", 0)])
        assert store.status("job1").rate is None  # 1 image in a few milliseconds is not "1310.7/s"
        store.redis.hset(store.keys.job("job1"), "started_at", time.time() - 10)
        running = store.status("job1")
        assert 0.09 < running.rate < 0.11 and 29 < running.eta < 31

    def test_a_done_job_has_a_fixed_rate_even_before_finished_at_is_written(self, store):
        commit(store, total=1)
        store.redis.hset(store.keys.job("job1"), "started_at", time.time() - 10)
        store.record_results("job1", [ok("job1", 0)])
        store.redis.hdel(store.keys.job("job1"), "finished_at")  # the moment between the two writes
        first = store.status("job1")
        time.sleep(0.05)
        assert first.state == "done" and first.rate and store.status("job1").rate == first.rate

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


REAL_TOP = [{"wnid": "n01440764", "label": "tench", "score": 0.7853981852531433},  # float32 values, as a model's
            {"wnid": "n01443537", "label": "goldfish", "score": 0.0625}, {"wnid": "n01484850", "label":
            "great_white_shark", "score": 0.03125}, {"wnid": "n01491361", "label": "tiger_shark", "score": 0.015625},
            {"wnid": "n01494475", "label": "hammerhead", "score": 0.0078125}]


def worker_record(job, image, worker="celery@worker-host-01", **extra):
    return ok_record(job, image, f"/img/{image}.jpg", REAL_TOP, weights="file:resnet50.h5:sha256:0123456789ab",
                     precision="fp32", runtime="tensorflow 2.21.0", worker=worker, decode_ms=12.34,
                     inference_ms=41.27, **extra)


class TestCompactRecords:
    def test_records_come_back_whole_with_paths_from_the_batches_and_provenance_per_worker(self, store):
        commit(store, total=4)
        written = [worker_record("job1", 0), worker_record("job1", 1, worker="celery@other"),
                   worker_record("job1", 2, known=True, activations={"file": "/d/2.npz", "dtype": "float16",
                                                                     "bytes": 9, "layers": {"avg_pool": [2048]}}),
                   error_record("job1", 3, "/img/3.jpg", "corrupt", "truncated \udcff", weights="w", worker="x",
                                decode_ms=1.5)]
        store.record_results("job1", written)
        assert list(store.iter_records("job1")) == written
        assert store.record("job1", 2) == written[2] and store.record("job1", 9) is None

    def test_records_that_do_not_pack_are_kept_exactly(self, store):
        commit(store, total=2)
        odd = [ok_record("job1", 0, "/img/0.jpg", [{"wnid": "n0", "label": "mine", "score": 0.1}], weights="w"),
               ok_record("job1", 1, "/img/1.jpg", TOP, weights="w", decode_ms=1 / 3)]  # 0.9, 1/3: not float32
        store.record_results("job1", odd)
        assert list(store.iter_records("job1")) == odd

    def test_a_finished_job_costs_at_most_250_bytes_per_image(self, store):
        n = 1000
        store.stage_batches("big", [{"v": 1, "job": "big", "batch": b, "top_k": 5,
                                     "images": [[i, f"/data/photos/2024/holiday/IMG_{i:05d}.jpg"]
                                                for i in range(b * 32, min(b * 32 + 32, n))]}
                                    for b in range((n + 31) // 32)])
        store.commit_job("big", name="big", total=n, batches=(n + 31) // 32, params={"top_k": 5, "batch_size": 32})
        for start in range(0, n, 32):
            store.record_results("big", [worker_record("big", i, worker=f"celery@host-{i % 2}")
                                         for i in range(start, min(start + 32, n))])
        keys = [k for k in store.redis.scan_iter(match=f"{store.keys.ns}:*") if k not in (store.keys.jobs,)]
        per_image = sum(store.redis.memory_usage(k, samples=0) for k in keys) / n
        print(f"\nfinished job: {per_image:.0f} bytes of Redis per image ({n} images)")
        assert per_image <= 250


class TestLifecycle:
    def test_writes_to_a_deleted_job_write_nothing(self, store):
        commit(store)
        store.delete("job1")
        assert store.record_results("job1", [ok("job1", 0)]) == -1
        store.mark_started("job1")
        assert not store.open_for_work("job1")
        assert store.redis.keys(f"{store.keys.ns}:*") == []

    def test_a_partial_job_hash_reads_as_no_job(self, store):
        store.redis.hset(store.keys.job("half"), mapping={"started_at": 1.0, "last_record_at": 2.0})
        with pytest.raises(JobNotFound):
            store.status("half")
        store.redis.zadd(store.keys.jobs, {"half": 1.0})
        assert store.list_jobs() == []

    def test_a_finished_job_expires_after_its_retention_and_an_active_one_never(self, store):
        store.stage_batches("job1", [{"v": 1, "job": "job1", "batch": 0, "top_k": 1, "images": [[0, "/a"], [1, "/b"]]}])
        store.commit_job("job1", name="j", total=2, batches=1, params={"top_k": 1}, retention=3600)
        store.record_results("job1", [ok_record("job1", 0, "/a", TOP)])
        assert all(store.redis.ttl(k) == -1 for k in store.redis.keys(f"{store.keys.ns}:*"))
        assert store.status("job1").expires_at is None and store.status("job1").retention == 3600
        store.record_results("job1", [ok_record("job1", 1, "/b", TOP)])
        job_keys = [store.keys.job("job1"), store.keys.results("job1"), store.keys.batches("job1")]
        assert all(3500 < store.redis.ttl(k) <= 3600 for k in job_keys)
        assert store.redis.ttl(store.keys.jobs) == -1 and store.redis.ttl(store.keys.active) < 0  # never a TTL
        status = store.status("job1")
        assert 3500 < status.expires_at - time.time() <= 3600 and not status.expiring_soon()
        assert status.expiring_soon(now=status.expires_at - 300)

    def test_cancelling_starts_the_retention(self, store):
        store.stage_batches("job1", [{"v": 1, "job": "job1", "batch": 0, "top_k": 1, "images": [[0, "/a"]]}])
        store.commit_job("job1", name="j", total=1, batches=1, params={"top_k": 1}, retention=60)
        store.cancel("job1")
        assert 0 < store.redis.ttl(store.keys.job("job1")) <= 60

    def test_expired_jobs_leave_the_job_list(self, store):
        commit(store)
        commit(store, job="gone")
        store.redis.delete(store.keys.job("gone"))  # as its retention would
        assert [s.id for s in store.list_jobs()] == ["job1"]
        assert store.redis.zrange(store.keys.jobs, 0, -1) == ["job1"]
        commit(store, job="old")
        store.redis.delete(store.keys.job("old"))
        assert store.forget_expired() == 1 and store.redis.zrange(store.keys.jobs, 0, -1) == ["job1"]

    def test_every_expired_id_leaves_the_job_list_not_only_the_oldest(self, store):
        """Only the oldest 1000 ids were looked at: jobs kept until deleted (retention 0) at the front of the
        list hid every expired id behind them, and the list grew for ever."""
        ids = [f"job{i:04d}" for i in range(2500)]
        gone = set(ids[1000::7]) | {ids[999], ids[1000], ids[2499]}  # across the chunks' edges too
        pipe = store.redis.pipeline(transaction=False)
        pipe.zadd(store.keys.jobs, {job: n for n, job in enumerate(ids)})
        for job in ids:
            if job not in gone:
                pipe.hset(store.keys.job(job), "id", job)  # kept: its hash is there
        pipe.execute()
        assert store.forget_expired() == len(gone)
        assert store.redis.zrange(store.keys.jobs, 0, -1) == [job for job in ids if job not in gone]


def test_a_worker_crashed_record_never_replaces_a_stored_one(store):
    commit(store, total=2)
    store.record_results("job1", [ok("job1", 0)])
    crashed = [error_record("job1", i, f"/img/{i}.jpg", "worker_crashed", "died", weights="random:0") for i in (0, 1)]
    store.record_results("job1", crashed)
    assert [r["status"] for r in store.iter_results("job1")] == ["ok", "error"]
    assert store.status("job1").failed == 1
