"""Walking, choosing and batching paths, and submitting a job to a real Redis (no worker)."""

import base64
import json
import os
from pathlib import Path

import pytest

from imgq import submit as enqueue
from imgq.contract import MODEL_NAME, TASK_CLASSIFY_BATCH, model_queue
from imgq.submit import EmptySelection, batches, submit
from imgq.walk import PathFilter, iter_images, read_path_list


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


@pytest.fixture
def tree(tmp_path):
    touch(tmp_path, "a.jpg", "b.PNG", "c.txt", "d.tiff", ".hidden.jpg", ".cache/e.jpg", "sub/f.webp",
          "sub/deeper/g.jpeg", "sub/h.gif")
    return tmp_path


def names(paths):
    return sorted(os.path.relpath(p) for p in paths)


def test_walk_takes_images_by_extension_skips_hidden_and_recurses(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert names(iter_images([str(tree)], PathFilter())) == [
        "a.jpg", "b.PNG", "d.tiff", "sub/deeper/g.jpeg", "sub/f.webp", "sub/h.gif"]


def test_no_recursive_stays_in_the_folder(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert names(iter_images(["."], PathFilter(recursive=False))) == ["a.jpg", "b.PNG", "d.tiff"]


def test_include_globs_replace_the_extensions(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert names(iter_images(["."], PathFilter(includes=("*.txt", "g.*")))) == ["c.txt", "sub/deeper/g.jpeg"]


def test_paths_are_absolute_normalised_and_unique(tree, monkeypatch):
    monkeypatch.chdir(tree / "sub")
    found = list(iter_images(["../a.jpg", str(tree / "a.jpg"), "..", "deeper/../h.gif"], PathFilter()))
    assert all(os.path.isabs(p) and os.path.normpath(p) == p for p in found)
    assert len(found) == len(set(found)) == 6
    assert found[0] == str(tree / "a.jpg")


def test_named_files_are_taken_whatever_their_extension(tree):
    assert list(iter_images([str(tree / "c.txt")], PathFilter())) == [str(tree / "c.txt")]


def test_walking_is_lazy(tree):
    images = iter_images([str(tree)], PathFilter())
    first = next(images)  # a generator: the first path comes before the rest of the tree is read
    assert first and not isinstance(images, list)


def test_excludes_match_names_and_paths_and_skip_whole_folders(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert names(iter_images([str(tree)], PathFilter(excludes=("sub",)))) == ["a.jpg", "b.PNG", "d.tiff"]
    assert names(iter_images([str(tree)], PathFilter(excludes=("*/deeper/*", "*.PNG")))) == [
        "a.jpg", "d.tiff", "sub/f.webp", "sub/h.gif"]


@pytest.mark.parametrize("marker", [".nomedia", ".imgqignore"])
def test_a_marker_file_skips_its_folder_and_everything_below(tree, monkeypatch, marker):
    monkeypatch.chdir(tree)
    touch(tree, f"sub/{marker}")
    assert names(iter_images([str(tree)], PathFilter())) == ["a.jpg", "b.PNG", "d.tiff"]
    touch(tree, marker)  # at the top: nothing at all
    assert list(iter_images([str(tree)], PathFilter())) == []
    assert names(iter_images([str(tree / "a.jpg")], PathFilter())) == ["a.jpg"]  # named files are still taken


def test_path_lists_skip_blank_and_comment_lines():
    assert list(read_path_list(["/a.jpg\n", "\n", "# note\n", "  \n", "/b c.png\n"])) == ["/a.jpg", "/b c.png"]


def test_batches_number_images_in_submission_order():
    messages = list(batches((f"/{i}.jpg" for i in range(5)), "j", batch_size=2, top_k=3))
    assert [m.batch for m in messages] == [0, 1, 2]
    assert [m.images for m in messages] == [((0, "/0.jpg"), (1, "/1.jpg")), ((2, "/2.jpg"), (3, "/3.jpg")),
                                            ((4, "/4.jpg"),)]
    assert {m.top_k for m in messages} == {3}


def queued_refs(store, model: str = MODEL_NAME) -> list[dict]:
    """The task arguments waiting in ``model``'s Celery queue, decoded from kombu's envelope: batch references."""
    raw = store.redis.lrange(store.keys.model_queue(model_queue(store.keys.ns, model)), 0, -1)
    envelopes = [json.loads(r) for r in reversed(raw)]  # kombu LPUSHes, workers BRPOP
    assert {e["headers"]["task"] for e in envelopes} <= {TASK_CLASSIFY_BATCH}
    assert {e["content-type"] for e in envelopes} <= {"application/json"}
    return [json.loads(base64.b64decode(e["body"]))[0][0] for e in envelopes]


def queued_messages(store, settings) -> list[dict]:
    """The batch messages the queued references name, as the worker reads them from the batch list."""
    return [store.batch(ref["job"], ref["batch"]) for ref in queued_refs(store)]


def test_submit_stages_commits_and_queues_every_batch(tree, settings, store):
    submitted = submit(iter_images([str(tree)], PathFilter()), settings=settings, store=store, name="n", batch_size=4)
    assert (submitted.total, submitted.batches) == (6, 2)
    status = store.status(submitted.job)
    assert (status.name, status.total, status.state) == ("n", 6, "queued")
    assert status.params == {"top_k": settings.top_k, "batch_size": 4, "model": "resnet50",
                             "retention": settings.retention}
    assert queued_refs(store) == [{"v": 2, "job": submitted.job, "batch": b} for b in (0, 1)]  # paths once
    queued = queued_messages(store, settings)
    assert queued == list(store.iter_batches(submitted.job))
    assert [image for m in queued for image, _ in m["images"]] == list(range(6))


def test_empty_selection_leaves_no_job_and_queues_nothing(tmp_path, settings, store):
    touch(tmp_path, "notes.txt")
    with pytest.raises(EmptySelection):
        submit(iter_images([str(tmp_path)], PathFilter()), settings=settings, store=store)
    assert store.list_jobs() == []
    assert store.redis.keys(f"{settings.namespace}:*") == []


def test_submitting_many_small_batches(tmp_path, settings, store):
    paths = (f"/data/{i}.jpg" for i in range(1000))
    submitted = submit(paths, settings=settings, store=store, batch_size=1)
    assert submitted.batches == 1000 > enqueue.STAGE_BATCHES
    assert len(queued_messages(store, settings)) == 1000
