"""Walking, choosing and batching paths, and submitting a job to a real Redis (no worker)."""

import base64
import json
import os
from pathlib import Path

import pytest

from imgq.contract import MODEL_NAME, TASK_CLASSIFY_BATCH, model_queue
from imgq.jobs import submit as enqueue
from imgq.jobs.submit import EmptySelection, batches, submit
from imgq.storage.selection import PathFilter, Skipped
from imgq.storage.walk import iter_images, read_path_list


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


def test_a_folder_is_walked_in_sorted_order_whatever_the_file_system_lists(tmp_path, monkeypatch):
    names_ = ["b.jpg", "a.jpg", "c10.jpg", "c2.jpg", "A.png"]
    touch(tmp_path, *names_, "z/1.jpg", "m/1.jpg")
    real_scandir = os.scandir

    class Reversed:  # a file system that lists a folder in another order (tmpfs, NFS and ext4 differ)
        def __init__(self, path):
            with real_scandir(path) as entries:
                self.entries = sorted(entries, key=lambda entry: entry.name, reverse=True)

        def __iter__(self):
            return iter(self.entries)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    expected = ["A.png", "a.jpg", "b.jpg", "c10.jpg", "c2.jpg", "m/1.jpg", "z/1.jpg"]
    walked = [os.path.relpath(p, tmp_path) for p in iter_images([str(tmp_path)], PathFilter())]
    assert walked == expected  # not names(): the order itself is the point
    monkeypatch.setattr(os, "scandir", Reversed)
    assert [os.path.relpath(p, tmp_path) for p in iter_images([str(tmp_path)], PathFilter())] == expected


def test_the_walk_counts_and_names_the_files_it_skips(tree):
    touch(tree, "sub/IMG_0001.MOV", "sub/README", "sub/deeper/notes.txt", ".cache/clip.MOV")
    skipped = Skipped()
    assert len(list(iter_images([str(tree)], PathFilter(), skipped))) == 6
    # Hidden files and folders are left out on purpose (.hidden.jpg, .cache/): they are not counted.
    assert dict(skipped.by_kind) == {".txt": 2, ".MOV": 1, "(no extension)": 1}
    assert skipped.summary() == "skipped 4 files that are not images (2 .txt, 1 (no extension), 1 .MOV)"
    assert skipped.paths == []  # kept only when asked (--verbose)

    listed = Skipped(keep_paths=True)
    list(iter_images([str(tree / "sub")], PathFilter(recursive=False), listed))
    assert listed.paths == [str(tree / "sub" / "IMG_0001.MOV"), str(tree / "sub" / "README")]
    assert listed.summary() == "skipped 2 files that are not images (1 (no extension), 1 .MOV)"


def test_skipped_files_with_include_globs_and_none_at_all(tree):
    skipped = Skipped()
    list(iter_images([str(tree)], PathFilter(includes=("*.txt",)), skipped))
    assert skipped.summary() == ("skipped 6 files that match no --include "
                                 "(1 .PNG, 1 .gif, 1 .jpeg, 1 .jpg, 1 .tiff, 1 .webp)")
    nothing = Skipped()
    list(iter_images([str(tree / "sub" / "deeper")], PathFilter(), nothing))
    assert (nothing.total, nothing.summary(), nothing.to_fields()) == (0, "", {})


def test_many_kinds_are_summed_up(tmp_path):
    touch(tmp_path, *(f"f.x{i}" for i in range(9)), "g.x0")
    skipped = Skipped()
    list(iter_images([str(tmp_path)], PathFilter(), skipped))
    assert skipped.kinds() == "2 .x0, 1 .x1, 1 .x2, 1 .x3, 1 .x4, 1 .x5, 3 more kinds"


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


def test_the_job_keeps_what_its_walk_skipped(tree, settings, store):
    touch(tree, "IMG_0001.MOV")
    skipped = Skipped()
    job = submit(iter_images([str(tree)], PathFilter(), skipped), settings=settings, store=store, skipped=skipped).job
    status = store.status(job)
    assert (status.total, status.skipped_files, status.skipped_kinds) == (6, 2, "1 .MOV, 1 .txt")
    plain = submit(iter_images([str(tree / "sub")], PathFilter()), settings=settings, store=store).job
    assert (store.status(plain).skipped_files, store.status(plain).skipped_kinds) == (0, "")


def test_empty_selection_leaves_no_job_and_queues_nothing(tmp_path, settings, store):
    touch(tmp_path, "notes.txt")
    skipped = Skipped()
    with pytest.raises(EmptySelection, match=r"--recursive; skipped 1 file that is not an image \(1 .txt\)\.$"):
        submit(iter_images([str(tmp_path)], PathFilter(), skipped), settings=settings, store=store, skipped=skipped)
    assert store.list_jobs() == []
    assert store.redis.keys(f"{settings.namespace}:*") == []


def test_submitting_many_small_batches(tmp_path, settings, store):
    paths = (f"/data/{i}.jpg" for i in range(1000))
    submitted = submit(paths, settings=settings, store=store, batch_size=1)
    assert submitted.batches == 1000 > enqueue.STAGE_BATCHES
    assert len(queued_messages(store, settings)) == 1000


def test_staging_holds_a_bounded_number_of_images_whatever_the_batch_size(settings, store, monkeypatch):
    staged = []
    stage = store.stage_batches
    monkeypatch.setattr(store, "stage_batches", lambda job, messages: (
        staged.append(sum(len(m["images"]) for m in messages)), stage(job, messages)))
    submitted = submit((f"/data/{i}.jpg" for i in range(40_000)), settings=settings, store=store, batch_size=1024)
    assert submitted.batches == 40 < enqueue.STAGE_BATCHES and sum(staged) == 40_000
    assert max(staged) < 16_000 + 1024  # STAGE_IMAGES, not the whole job at once as 40 batches of 1024 were


def test_the_sidecars_imgq_tag_wrote_are_not_counted_as_skipped(run, store, tmp_path):
    """A later scan of a tagged folder: the XMP sidecars `imgq tag` wrote beside its images (IMG.jpg.xmp, or
    IMG.xmp with --sidecar-name stem) belong to images the walk takes, and are not counted as skipped files; an
    .xmp beside no such image still is (issue 25 item 17g)."""
    from tests.imagegen import save
    from tests.test_tag import store_job, top

    photos = tmp_path / "photos"
    for seed, name in enumerate(("a.jpg", "b.JPG", "sub/c.png")):
        save(photos / name, seed=seed)
    full = store_job(store, [(str(photos / "a.jpg"), top(("tench", 0.9))), (str(photos / "sub/c.png"), top(("x", 1)))])
    assert run("tag", full).exit_code == 0
    stem = store_job(store, [(str(photos / "b.JPG"), top(("goldfish", 0.8)))], job="job2")
    assert run("tag", stem, "--sidecar-name", "stem").exit_code == 0
    assert {p.name for p in photos.rglob("*.xmp")} == {"a.jpg.xmp", "b.xmp", "c.png.xmp"}
    touch(photos, "notes.xmp", "gone.jpg.xmp", "a.txt.xmp", "clip.MOV")  # beside no image: counted
    skipped = Skipped(keep_paths=True)
    assert len(list(iter_images([str(photos)], PathFilter(), skipped))) == 3
    assert sorted(os.path.relpath(p, photos) for p in skipped.paths) == [
        "a.txt.xmp", "clip.MOV", "gone.jpg.xmp", "notes.xmp"]
    assert skipped.summary() == "skipped 4 files that are not images (3 .xmp, 1 .MOV)"


def test_a_symlinked_folder_is_counted_as_not_followed_not_as_a_file(run, store, tmp_path):
    """The walk does not follow a symlinked folder (by design: a loop, or a tree outside the one named). It is
    counted and said as one, not as a file that is not an image; a link to a folder named like an image is not
    queued as an image either, and a link to a file is a file (issue 25 item 17h)."""
    elsewhere, photos = tmp_path / "elsewhere", tmp_path / "photos"
    touch(elsewhere, "x.jpg")
    touch(photos, "a.jpg", "notes.txt", "sub/b.jpg")
    os.symlink(elsewhere, photos / "album")
    os.symlink(elsewhere, photos / "sub" / "trip.jpg")
    os.symlink(photos / "a.jpg", photos / "same.jpg")
    skipped = Skipped(keep_paths=True)
    found = [os.path.relpath(p, photos) for p in iter_images([str(photos)], PathFilter(), skipped)]
    assert found == ["a.jpg", "same.jpg", "sub/b.jpg"]
    assert (dict(skipped.by_kind), skipped.paths) == ({".txt": 1}, [str(photos / "notes.txt")])
    assert (skipped.folder_links, skipped.link_paths) == (2, [str(photos / "album"), str(photos / "sub" / "trip.jpg")])
    assert skipped.summary() == "skipped 1 file that is not an image (1 .txt); 2 symlinked folders, not followed"
    assert skipped.to_fields() == {"skipped_files": 1, "skipped_kinds": "1 .txt"}  # files, as the job keeps them
    flat = Skipped()
    list(iter_images([str(photos)], PathFilter(recursive=False), flat))
    assert flat.summary() == "skipped 1 file that is not an image (1 .txt)"  # no folder is walked into

    result = run("submit", str(photos), "--verbose")
    assert result.exit_code == 0, result.output
    assert ("Queued 3 images in 1 batch; skipped 1 file that is not an image (1 .txt); 2 symlinked folders, not "
            "followed.") in result.stderr
    assert f"not followed (symlinked folder): {photos / 'album'}\n" in result.stderr
    links = tmp_path / "links"
    links.mkdir()
    os.symlink(elsewhere, links / "album")
    nothing = run("submit", str(links))
    assert nothing.exit_code == 1 and "Traceback" not in nothing.output
    assert "--recursive; 1 symlinked folder, not followed." in nothing.stderr
