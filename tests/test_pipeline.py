"""End to end: the CLI submits to a real Redis, a real worker process (random weights) classifies."""

import csv
import io
import json
import time

import pytest

from imgq.contract import ERROR_CODES
from imgq.results.store import ResultStore
from tests import imagegen
from tests.processes import imgq_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory):
    """~50 images in many formats and modes (in sub-folders), plus broken files with their expected codes."""
    root = tmp_path_factory.mktemp("tree")
    good = []
    for seed in range(3):
        good += imagegen.write_formats(root / f"set{seed}" / "nested", seed=seed)
    good += [imagegen.save(root / f"extra{i}.png", size=(64 + i, 500), seed=10 + i) for i in range(6)]
    broken = imagegen.write_broken(root / "broken")
    return root, good, broken


def invoke(settings, *args):
    return imgq_cli(settings, *args)


def drained(store: ResultStore, settings) -> bool:
    prefix = f"{settings.namespace}:kombu:"
    return store.redis.llen(prefix + settings.namespace) == 0 and store.redis.hlen(prefix + "unacked") == 0


def test_every_image_gets_exactly_one_record(live_worker, worker_settings, photo_tree, tmp_path):
    root, good, broken = photo_tree
    paths = [str(p) for p in good] + [str(p) for p in broken]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(paths) + "\n")
    job = invoke(worker_settings, "submit", "--from-file", str(listing), "--batch-size", "8").stdout.strip()
    invoke(worker_settings, "wait", job, "--timeout", "180")

    store = ResultStore.from_settings(worker_settings)
    status = store.status(job)
    assert (status.state, status.total, status.processed) == ("done", len(paths), len(paths))
    assert (status.ok, status.failed) == (len(good), len(broken))

    records = list(store.iter_results(job))
    assert [r["image"] for r in records] == list(range(len(paths)))
    assert [r["path"] for r in records] == paths
    for record in records[: len(good)]:
        assert record["status"] == "ok", record
        scores = [t["score"] for t in record["top_k"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True) and 0 <= scores[-1] <= scores[0] <= 1
        assert record["weights"].startswith("random:0") and record["model"] == "resnet50"
        assert record["worker"] and record["decode_ms"] > 0 and record["inference_ms"] > 0
    codes = {r["path"]: r["error"]["code"] for r in records[len(good):]}
    assert codes == {str(p): code for p, code in broken.items()}
    assert set(codes.values()) <= ERROR_CODES.keys()

    # The exports carry the same records.
    exported = [json.loads(line) for line in invoke(worker_settings, "results", job).stdout.splitlines()]
    assert exported == records
    rows = list(csv.DictReader(io.StringIO(invoke(worker_settings, "results", job, "--format", "csv").stdout)))
    assert [row["path"] for row in rows] == paths
    assert [row["label_1"] for row in rows[: len(good)]] == [r["top_k"][0]["label"] for r in records[: len(good)]]
    assert float(rows[0]["score_5"]) == pytest.approx(records[0]["top_k"][4]["score"], rel=1e-5)


def test_same_image_same_labels_across_formats(live_worker, worker_settings, tmp_path):
    """A lossless copy in another format gives the same labels: decoding is format-independent."""
    imagegen.save(tmp_path / "a.png", seed=5)
    imagegen.save(tmp_path / "a.bmp", seed=5)
    imagegen.save(tmp_path / "a.webp", seed=5, lossless=True)
    job = invoke(worker_settings, "submit", str(tmp_path), "--wait").stdout.strip()
    records = list(ResultStore.from_settings(worker_settings).iter_results(job))
    assert len(records) == 3 and len({json.dumps(r["top_k"]) for r in records}) == 1


def test_cancel_stops_new_batches(live_worker, worker_settings, tmp_path):
    for i in range(60):
        imagegen.save(tmp_path / f"{i}.png", size=(64, 64), seed=i)
    store = ResultStore.from_settings(worker_settings)
    job = invoke(worker_settings, "submit", str(tmp_path), "--batch-size", "2").stdout.strip()
    invoke(worker_settings, "cancel", job)
    at_cancel = store.status(job).processed
    deadline = time.monotonic() + 60
    while not drained(store, worker_settings) and time.monotonic() < deadline:
        time.sleep(0.2)
    final = store.status(job)
    assert drained(store, worker_settings)
    assert final.state == "cancelled"
    # At most the batches already in the worker's hands (one per thread) finish after the cancel.
    assert final.processed <= at_cancel + worker_settings.concurrency * 2
    assert len(list(store.iter_results(job))) == final.processed
