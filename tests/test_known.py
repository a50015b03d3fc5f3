"""The content-hash index (imgq/results/known.py) against a real Redis, and --skip-known end to end."""

import os
import shutil

import pytest
import redis

from imgq.keys import Keys
from imgq.results.known import CLAIM, KnownImages, file_digest, pack, unpack
from imgq.results.store import ResultStore
from tests import imagegen
from tests.processes import imgq_cli


@pytest.fixture
def index(settings):
    client = redis.Redis.from_url(settings.broker_url)
    return KnownImages(client, Keys(settings.namespace), "random:0", "fp32", 5)


def test_pack_round_trips_and_never_looks_like_a_claim():
    top = [(67, 0.5), (0, 0.25), (999, 0.125)]  # class 67 packs to 0x43, the claim marker's byte
    assert unpack(pack(top)) == top and not pack(top).startswith(CLAIM)


DOCUMENTED_BYTES = 120  # imgq/results/known.py: 73 on Valkey 9.1, 112 on Redis 7.0, at most 120


def test_memory_per_known_image_is_what_the_docs_say(index):
    n = 2000
    index.remember({file_digest(str(i).encode()): [(i % 1000, 0.5)] * 5 for i in range(n)})
    per_image = index.redis.memory_usage(index.key, samples=0) / n
    assert per_image <= DOCUMENTED_BYTES, per_image
    print(f"known-image index: {per_image:.0f} bytes per image")


def test_claims_are_exclusive_and_results_are_shared(index, settings):
    other = KnownImages(redis.Redis.from_url(settings.broker_url), Keys(settings.namespace), "random:0", "fp32", 5)
    a, b = file_digest(b"a"), file_digest(b"b")
    assert index.claim([a, b]) == {a, b}
    assert other.claim([a, b]) == set()  # being computed elsewhere
    assert index.lookup([a, b]) == {}  # claims are not results
    index.remember({a: [(1, 0.5)]})
    assert other.wait_for({a}, timeout=1) == {a: [(1, 0.5)]}
    index.release([b])
    assert other.claim([b]) == {b}
    assert other.claim([a]) == set()
    assert other.claim([a], refresh_for="job1") == {a}  # --force: once per job
    index.remember({a: [(2, 0.5)]})
    assert other.claim([a], refresh_for="job1") == set()


def test_a_stale_claim_is_taken_over(index, monkeypatch):
    digest = file_digest(b"x")
    index.claim([digest])
    monkeypatch.setattr("imgq.results.known.CLAIM_SECONDS", -1.0)
    assert index.claim([digest]) == {digest}


@pytest.mark.slow
def test_skip_known_classifies_each_distinct_picture_once(live_worker, worker_settings, tmp_path):
    folder = tmp_path / "copies"
    folder.mkdir()
    for seed in range(3):
        original = imagegen.save(folder / f"pic{seed}-0.png", seed=100 + seed)
        for copy in range(1, 4):
            shutil.copy(original, folder / f"pic{seed}-{copy}.png")
    (folder / "broken-0.jpg").write_bytes(b"\xff\xd8 broken")
    shutil.copy(folder / "broken-0.jpg", folder / "broken-1.jpg")

    def run(*flags):
        result = imgq_cli(worker_settings, "submit", str(folder), "--batch-size", "4", "--wait", *flags)
        records = list(ResultStore.from_settings(worker_settings).iter_results(result.stdout.strip()))
        assert len(records) == 14
        return records

    first = run("--skip-known")
    computed = [r for r in first if r["status"] == "ok" and not r.get("known")]
    assert len(computed) == 3  # one forward pass per distinct picture, whatever the batches
    labels = {os.path.basename(r["path"]).split("-")[0]: set() for r in first}
    for r in first:
        labels[os.path.basename(r["path"]).split("-")[0]].add(str(r["top_k"]) if r["status"] == "ok" else "error")
    assert all(len(v) == 1 for v in labels.values())  # copies carry the same result
    assert [r["error"]["code"] for r in first if r["status"] == "error"] == ["not_an_image"] * 2

    second = run("--skip-known")
    assert [r.get("known", False) for r in second if r["status"] == "ok"] == [True] * 12  # no forward pass

    forced = run("--force")
    assert sum(1 for r in forced if r["status"] == "ok" and not r.get("known")) == 3  # recomputed, once each


def test_hashing_keeps_what_it_read_within_the_batch_budget(tmp_path):
    """--skip-known's hashing pass keeps the bytes it read for the decode (worker/batches/known_batch.py), at most
    the batch's budget in all; past it an image is hashed and not kept (read again to be decoded); a read that
    failed keeps its error, for the record, without a second read."""
    from types import SimpleNamespace

    from imgq.settings import Settings
    from imgq.storage.errors import ImageError
    from worker.batches.known_batch import Held, _digest

    runtime = SimpleNamespace(settings=Settings(max_file_bytes=1000))
    first, second = tmp_path / "a.jpg", tmp_path / "b.jpg"
    first.write_bytes(b"a" * 600)
    second.write_bytes(b"b" * 600)
    held = Held(runtime.settings.max_file_bytes)
    assert _digest(0, str(first), runtime, held) == file_digest(b"a" * 600)
    assert _digest(1, str(second), runtime, held) == file_digest(b"b" * 600)  # hashed, over the budget left
    assert _digest(2, str(tmp_path / "gone.jpg"), runtime, held) is None
    reads = held.only([0, 1, 2])
    assert reads[0] == b"a" * 600 and 1 not in reads
    assert isinstance(reads[2], ImageError) and reads[2].code == "missing"
    assert held.only([2]).keys() == {2}  # the others let go
