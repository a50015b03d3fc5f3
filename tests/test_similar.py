"""`imgq similar` at any size without a worker: a collection of jobs read a batch file at a time, exact search
up to a size and the approximate index (faiss IVF) above it, cached beside the embeddings under the collection's
digest (under an s3:// dump root: tests/test_s3_similar.py); a schedule's jobs as one collection; `--to PATH`
refused in one line when no worker can classify it."""

import json
import os

import numpy as np
import pytest

from imgq.alike import search
from imgq.alike.batchfile import BatchFileError, BatchVectors, batch_file, normalised, write_batch
from imgq.alike.collection import CollectionError, open_collection
from imgq.schedules.schedule import ScheduleBook

FEATURES = 64
CLUSTER = 10


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors in clusters of CLUSTER rows (rows 10c..10c+9): a row's cosine with its cluster's others
    is about 0.8, with any other row about 0."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // CLUSTER, FEATURES))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return normalised(np.repeat(centres, CLUSTER, axis=0) + 0.5 * rng.standard_normal((n, FEATURES)) / 8)


def write_job(root: str, job: str, vectors: np.ndarray, batch: int = 500, first: int = 0, weights: str = "imagenet",
              paths: list[str] | None = None) -> None:
    rng = np.random.default_rng(first)
    for start in range(0, len(vectors), batch):
        rows = vectors[start:start + batch]
        image = np.arange(start, start + len(rows), dtype=np.int64)
        names = paths[start:start + len(rows)] if paths else [f"/p/{job}/{i}.jpg" for i in image]
        write_batch(root, job, start // batch, BatchVectors(
            image=image, path=np.array([p.encode() for p in names], dtype=np.bytes_), embedding=rows,
            phash=rng.integers(0, 2**63, len(rows), dtype=np.int64).astype(np.uint64),
            content=rng.integers(0, 256, (len(rows), 16), dtype=np.uint8), model="resnet50", weights=weights))


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    """A job of 2,000 clustered rows in 4 batch files, and its collection."""
    root = str(tmp_path_factory.mktemp("similar"))
    write_job(root, "clusters1", clustered(2000))
    return root, open_collection(root, ["clusters1"])


def test_a_collection_numbers_rows_across_files_and_finds_an_image(clusters):
    root, collection = clusters
    assert len(collection) == 2000 and [p.start for p in collection.parts] == [0, 500, 1000, 1500]
    row, vector = collection.find("clusters1", 1234)
    assert row == 1234 and vector.dtype == np.float32 and vector.shape == (FEATURES,)
    assert collection.locate([1234, 3]) == [("clusters1", 1234, "/p/clusters1/1234.jpg"),
                                            ("clusters1", 3, "/p/clusters1/3.jpg")]
    assert collection.find("clusters1", 2000) is None


def test_exact_search_below_the_threshold_and_the_index_above_give_the_same_cluster(clusters):
    root, collection = clusters
    for row in (0, 777, 1999):
        mates = set(range(row // CLUSTER * CLUSTER, row // CLUSTER * CLUSTER + CLUSTER)) - {row}
        query = collection.find("clusters1", row)[1]
        exact = search.top_k(collection, query, CLUSTER - 1, exclude=[row], approximate_above=len(collection))
        approximate = search.top_k(collection, query, CLUSTER - 1, exclude=[row],
                                     approximate_above=len(collection) - 1)
        assert (exact.method, approximate.method) == ("exact", "approximate")
        assert set(exact.rows) == set(approximate.rows) == mates
        assert np.allclose(sorted(exact.scores), sorted(approximate.scores), atol=1e-3)
    # Built once, beside the embeddings, named by the collection's digest.
    assert os.path.dirname(search.index_file(collection)) == os.path.join(root, "clusters1")
    assert os.path.isfile(search.index_file(collection))


def test_the_index_is_rebuilt_when_the_embeddings_change_and_the_stale_one_goes(tmp_path):
    root = str(tmp_path)
    vectors = clustered(300)
    write_job(root, "changing1", vectors, batch=100)
    before = open_collection(root, ["changing1"])
    old = search.index_file(before)
    search.top_k(before, vectors[0], 3, approximate_above=0)
    moved = vectors.copy()
    moved[[0, 150]] = moved[[150, 0]]  # rows 0 and 150 trade places: batch files 0 and 1 are written again
    write_job(root, "changing1", moved, batch=100)
    after = open_collection(root, ["changing1"])
    assert after.digest != before.digest and search.index_file(after) != old
    found = search.top_k(after, moved[0], 1, approximate_above=0)
    assert found.rows == [0] and not os.path.exists(old) and os.path.isfile(search.index_file(after))


def test_a_cache_file_that_is_a_link_or_not_an_index_is_refused_in_one_line(tmp_path):
    root = str(tmp_path)
    vectors = clustered(100)
    write_job(root, "cached1", vectors)
    collection = open_collection(root, ["cached1"])
    path = search.index_file(collection)
    os.symlink(os.path.join(root, "elsewhere"), path)
    with pytest.raises(search.IndexUnavailable, match="symbolic link"):
        search.top_k(collection, vectors[0], 3, approximate_above=0)
    os.unlink(path)
    with open(path, "wb") as file:
        file.write(b"not an index")
    with pytest.raises(search.IndexUnavailable, match="not a faiss index") as raised:
        search.top_k(collection, vectors[0], 3, approximate_above=0)
    assert "\n" not in str(raised.value)


def test_jobs_of_other_weights_never_make_one_collection(tmp_path):
    root = str(tmp_path)
    write_job(root, "trained1", clustered(20))
    write_job(root, "random1", clustered(20), weights="random:0")
    with pytest.raises(CollectionError, match="never meet"):
        open_collection(root, ["trained1", "random1"])
    with pytest.raises(CollectionError, match="submit it with --embeddings"):
        open_collection(root, ["trained1", "nofiles1"])


def ran(job: str | None) -> dict:
    """A run as a tick records it (imgq/schedules/tick.py's ``_run``)."""
    return {"at": 0.0, "trigger": "manual", "outcome": "submitted" if job else "empty", "reason": "", "job": job,
            "batches": 1, "found": None, "settled": None, "skipped_files": 0, "skipped_kinds": ""}


@pytest.fixture
def schedule(run, settings, store, tmp_path):
    """Schedule `trips` (paused, --embeddings) whose runs submitted two jobs of 40 rows each: the second a later
    tick that classified /p/trips/3.jpg again (edited) and 39 new files."""
    root = settings.effective_dump_root
    folder = tmp_path / "photos"
    folder.mkdir()
    assert run("schedule", "add", "trips", str(folder), "--every", "1h", "--paused", "--embeddings").exit_code == 0
    book = ScheduleBook(store, settings)
    vectors = clustered(80, seed=3)
    write_job(root, "tick1job", vectors[:40], batch=16, paths=[f"/p/trips/{i}.jpg" for i in range(40)])
    later = [f"/p/trips/{i}.jpg" for i in [3, *range(41, 80)]]
    write_job(root, "tick2job", vectors[40:], batch=16, paths=later)
    for job in ("tick1job", "tick2job"):
        book.record_run("trips", ran(job))
    book.record_run("trips", ran(None))
    return book, vectors


def test_a_schedule_with_embeddings_says_so_and_its_ticks_ask_for_them(schedule, run, store):
    book, _ = schedule
    assert book.get("trips").embeddings and book.jobs("trips") == ["tick1job", "tick2job"]
    assert "embeddings" in run("schedule", "show", "trips").output


def test_similar_and_duplicates_search_a_schedules_jobs_as_one_collection(schedule, run, settings):
    book, vectors = schedule
    # Image 0 of tick2job is row 40: its cluster (rows 40..49) spans rows 40..49 of tick2job only.
    result = run("similar", "--schedule", "trips", "tick2job", "0", "-k", "9", "--json")
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert {(h["job"], h["image"]) for h in hits} == {("tick2job", i) for i in range(1, 10)}
    # Image 5 of tick1job: its cluster is rows 0..9 of tick1job, but /p/trips/3.jpg was classified again by tick 2
    # (another picture now): the collection has only its newest row, so no hit is tick1job's image 3.
    result = run("similar", "--schedule", "trips", "tick1job", "5", "-k", "20", "--json")
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.exit_code == 0 and len({h["path"] for h in hits}) == len(hits) == 20
    assert {h["job"] for h in hits} == {"tick1job", "tick2job"}
    mates = {(h["job"], h["image"]) for h in hits[:8]}
    assert mates == {("tick1job", i) for i in (0, 1, 2, 4, 6, 7, 8, 9)} and ("tick1job", 3) not in {
        (h["job"], h["image"]) for h in hits}
    result = run("duplicates", "--schedule", "trips", "--max-distance", "0")
    assert result.exit_code == 0, result.output
    assert "among 79" in result.stderr  # 80 rows, one path classified twice


def test_a_schedule_without_embeddings_or_of_mixed_weights_is_refused_in_one_line(schedule, run, settings, store):
    book, _ = schedule
    write_job(settings.effective_dump_root, "tick3job", clustered(10), weights="random:0")
    book.record_run("trips", ran("tick3job"))
    for args in (["similar", "--schedule", "trips", "tick1job", "0"], ["duplicates", "--schedule", "trips"]):
        result = run(*args)
        assert result.exit_code == 1 and "never meet" in result.output and len(result.output.splitlines()) == 1
    run("schedule", "add", "bare", "/tmp", "--every", "1h", "--paused")
    ScheduleBook(store, settings).record_run("bare", ran("nofilesjob"))
    for args in (["duplicates", "--schedule", "bare"], ["duplicates", "--schedule", "nosuch"]):
        result = run(*args)
        assert result.exit_code == 1 and len(result.output.splitlines()) == 1 and "Traceback" not in result.output


def test_to_a_new_photo_is_refused_in_one_line_without_a_worker_of_the_jobs_weights(run, settings, tmp_path):
    write_job(settings.effective_dump_root, "alone1", clustered(20))
    photo = tmp_path / "new.jpg"
    photo.write_bytes(b"\xff\xd8 not much of a photo")
    result = run("similar", "alone1", "--to", str(photo))
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1
    assert "No live worker serves model resnet50 with weights imagenet" in result.output


@pytest.mark.parametrize("args", [
    ["similar", "j", "0", "--to", "{photo}"], ["similar", "j"], ["similar"], ["similar", "j", "--to", "{folder}"],
    ["similar", "j", "--to", "{photo}", "--timeout", "0"], ["similar", "j", "--to", "{photo}", "--timeout", "-1"],
    ["similar", "j", "--to", "{photo}", "--timeout", "nan"], ["similar", "j", "--to", "{photo}", "--timeout", "inf"],
    ["similar", "j", "--to", "{photo}", "--timeout", "1e99"], ["similar", "j", "--to", "{folder}/missing.jpg"],
    ["duplicates", "--max-distance", "4"],
])
def test_similar_and_duplicates_usage_at_the_edges_is_one_line(run, tmp_path, args):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    result = run(*[a.format(photo=photo, folder=tmp_path) for a in args])
    assert result.exit_code == 2 and "Traceback" not in result.output and "Error" in result.output


def test_a_batch_file_rewritten_under_the_same_name_changes_the_digest(tmp_path):
    root = str(tmp_path)
    write_job(root, "same1", clustered(20))
    first = open_collection(root, ["same1"]).digest
    assert open_collection(root, ["same1"]).digest == first  # nothing read changes it
    os.utime(batch_file(root, "same1", 0), ns=(1, 1))
    assert open_collection(root, ["same1"]).digest != first


def test_a_batch_file_written_again_after_the_collection_was_opened_is_one_line_and_no_index(tmp_path):
    root = str(tmp_path)
    vectors = clustered(200)
    write_job(root, "redone1", vectors, batch=100)
    collection = open_collection(root, ["redone1"])
    write_job(root, "redone1", clustered(200, seed=5), batch=100)  # a redelivered batch: a new file, renamed over
    for searched in (lambda: search.top_k(collection, vectors[0], 3, approximate_above=0),
                     lambda: search.top_k(collection, vectors[0], 3), lambda: collection.locate([150])):
        with pytest.raises(BatchFileError, match=r"redone1/embeddings-00000[01].npz was written again while the "
                                                 "collection was searched: search again") as raised:
            searched()
        assert "\n" not in str(raised.value)
    assert not [name for name in os.listdir(os.path.join(root, "redone1")) if name.endswith(".ivf")]
    assert search.top_k(open_collection(root, ["redone1"]), vectors[0], 3, approximate_above=0).method == "approximate"


def test_close_pairs_by_the_index_are_the_exact_pairs_of_a_clustered_set(clusters):
    from imgq.alike.pairs import cosine_pairs

    root, collection = clusters
    vectors = np.concatenate([batch.embedding for _, batch in collection.batches()])
    exact = {(i, j) for i, j, _ in cosine_pairs(vectors, 0.7)}
    assert len(exact) > 1000 and all(i // CLUSTER == j // CLUSTER for i, j in exact)  # within clusters only
    indexed = {(i, j) for i, j, _ in search.close_pairs(collection, 0.7)}
    # Approximate: a pair whose rows fell in lists far apart can be missed (1 of 3,600 here), none is made up.
    assert indexed <= exact and len(indexed) >= 0.99 * len(exact)


def test_duplicates_of_a_large_collection_use_the_index_and_find_the_same_groups(run, settings, monkeypatch):
    write_job(settings.effective_dump_root, "moments1", clustered(400))
    args = ("duplicates", "moments1", "--max-distance", "0", "--moment", "0.7")
    exact = run(*args)
    assert exact.exit_code == 0, exact.output
    monkeypatch.setattr(search, "PAIRS_APPROXIMATE_ABOVE", 399)
    indexed = run(*args)
    assert indexed.exit_code == 0, indexed.output
    assert "found by the approximate index" in indexed.stderr and "approximate" not in exact.stderr
    assert indexed.stdout == exact.stdout and exact.stdout.count('"same_moment"') == 400  # 40 groups of 10
