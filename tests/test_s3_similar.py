"""`imgq similar` and `imgq duplicates` above their exact search's size when the dump root is an s3:// prefix of a real
S3 server (SeaweedFS's weed mini, tests/s3server.py): the approximate index is built from the batch objects and
cached on this machine (<state dir>/indexes/, never in the bucket), gives the exact search's neighbours, is read
again by the next search (which lists the prefix and reads no batch object but the query's and the hits': their
headers are remembered beside the index) and built again when a batch object is added or replaced. A cache folder
where nothing can be written is one line before any build; an object written again while the collection is searched
is one line and leaves no index behind. The thresholds are lowered to force the index on small collections, as
tests/test_similar.py does for local folders."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from imgq.alike import cache, search
from imgq.alike import collection as collection_module
from imgq.alike.batchfile import BatchFileError, BatchVectors, write_batch
from imgq.alike.collection import open_collection
from tests.test_similar import CLUSTER, clustered, write_job

BUCKET = "imgq-similar"
ROOT = f"s3://{BUCKET}/team/dumps"


@pytest.fixture
def bucket(s3):
    """The bucket, made once per session's server, emptied before each test; the test's own boto3 client."""
    client = s3.client()
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    for key in keys(client):
        client.delete_object(Bucket=BUCKET, Key=key)
    return client


def keys(client) -> list[str]:
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        found += [item["Key"] for item in page.get("Contents", ())]
    return sorted(found)


@pytest.fixture
def builds(monkeypatch) -> list[str]:
    """The paths the index was built into, in order (search.build_index, counted)."""
    built: list[str] = []
    real = search.build_index

    def counted(collection, path, seed=0):
        built.append(path)
        return real(collection, path, seed)
    monkeypatch.setattr(search, "build_index", counted)
    return built


def add_batch(job: str, vectors: np.ndarray, number: int, size: int = 100) -> None:
    """Batch ``number`` of ``job`` alone: rows (and image ids) ``number * size`` on of ``vectors``."""
    image = np.arange(number * size, min(len(vectors), (number + 1) * size), dtype=np.int64)
    write_batch(ROOT, job, number, BatchVectors(
        image=image, path=np.array([f"/p/{job}/{i}.jpg".encode() for i in image], dtype=np.bytes_),
        embedding=vectors[image], phash=np.zeros(len(image), dtype=np.uint64),
        content=np.zeros((len(image), 16), dtype=np.uint8), model="resnet50", weights="imagenet"))


def mates(row: int) -> set[int]:
    return set(range(row // CLUSTER * CLUSTER, row // CLUSTER * CLUSTER + CLUSTER)) - {row}


def test_the_index_of_an_s3_collection_is_cached_on_this_machine_and_finds_what_exact_search_finds(
        bucket, builds, tmp_path):
    state = str(tmp_path / "state")
    write_job(ROOT, "clusters1", clustered(2000))
    collection = open_collection(ROOT, ["clusters1"], state)
    for row in (0, 777, 1999):
        query = collection.find("clusters1", row)[1]
        exact = search.top_k(collection, query, CLUSTER - 1, exclude=[row], approximate_above=len(collection))
        approximate = search.top_k(collection, query, CLUSTER - 1, exclude=[row], approximate_above=0)
        assert (exact.method, approximate.method) == ("exact", "approximate")
        assert set(exact.rows) == set(approximate.rows) == mates(row)
        assert np.allclose(sorted(exact.scores), sorted(approximate.scores), atol=1e-3)
    path = search.index_file(collection)
    assert len(builds) == 1 and builds == [path] and os.path.isfile(path)
    assert path.startswith(os.path.join(state, "indexes") + os.sep) and path.split(os.sep)[-2] == "clusters1"
    assert keys(bucket) == [f"team/dumps/clusters1/embeddings-{b:06d}.npz" for b in range(4)]  # nothing written there


def test_the_next_search_reads_the_cache_and_an_added_or_replaced_object_builds_it_again(
        s3, bucket, builds, tmp_path):
    state = str(tmp_path / "state")
    vectors = clustered(400)
    write_job(ROOT, "growing1", vectors[:300], batch=100)
    gets = s3.requests("GET")
    first = open_collection(ROOT, ["growing1"], state)
    assert search.top_k(first, vectors[5], CLUSTER, approximate_above=0).rows[0] == 5
    assert s3.requests("GET") - gets == 3 * 3  # opened (each object's header), sampled, added
    gets = s3.requests("GET")
    again = open_collection(ROOT, ["growing1"], state)  # a second `imgq similar`: listed again
    assert again.digest == first.digest
    assert set(search.top_k(again, vectors[5], CLUSTER, approximate_above=0).rows) == mates(5) | {5}
    assert len(builds) == 1 and s3.requests("GET") == gets  # the headers remembered, the index cached: no GET

    add_batch("growing1", vectors, 3)  # rows 300..399, the others as they were
    gets = s3.requests("GET")
    grown = open_collection(ROOT, ["growing1"], state)
    assert s3.requests("GET") - gets == 1  # the new object's header alone
    assert len(grown) == 400 and grown.digest != first.digest
    found = search.top_k(grown, vectors[355], CLUSTER, approximate_above=0)
    assert set(found.rows) == mates(355) | {355} and len(builds) == 2
    assert not os.path.exists(search.index_file(first)) and os.path.isfile(search.index_file(grown))

    moved = vectors.copy()
    moved[[0, 150]] = moved[[150, 0]]  # rows 0 and 150 trade places: objects 0 and 1 are written again
    write_job(ROOT, "growing1", moved[:300], batch=100)
    replaced = open_collection(ROOT, ["growing1"], state)
    assert replaced.digest != grown.digest
    assert search.top_k(replaced, moved[0], 1, approximate_above=0).rows == [0] and len(builds) == 3
    assert [name for name in os.listdir(os.path.dirname(search.index_file(replaced))) if name.endswith(".ivf")] == [
        os.path.basename(search.index_file(replaced))]  # the stale ones went


def test_an_object_added_while_the_collection_is_listed_is_in_the_next_index(bucket, builds, tmp_path, monkeypatch):
    state = str(tmp_path / "state")
    vectors = clustered(300)
    write_job(ROOT, "listed1", vectors[:200], batch=100)
    real = collection_module.batch_listing

    def listed_then_written(root, job):
        listed = real(root, job)
        add_batch("listed1", vectors, 2)  # lands just after the listing
        return listed
    monkeypatch.setattr(collection_module, "batch_listing", listed_then_written)
    during = open_collection(ROOT, ["listed1"], state)
    monkeypatch.setattr(collection_module, "batch_listing", real)
    assert len(during) == 200  # the files listed: the index is of those, under their digest
    assert set(search.top_k(during, vectors[15], CLUSTER, approximate_above=0).rows) == mates(15) | {15}
    after = open_collection(ROOT, ["listed1"], state)
    assert len(after) == 300 and after.digest != during.digest
    assert set(search.top_k(after, vectors[255], CLUSTER, approximate_above=0).rows) == mates(255) | {255}
    assert len(builds) == 2


def test_the_headers_remembered_are_those_of_the_objects_listed_and_a_bad_cache_file_is_read_again(
        s3, bucket, tmp_path):
    state = str(tmp_path / "state")
    vectors = clustered(300)
    write_job(ROOT, "known1", vectors, batch=100)
    first = open_collection(ROOT, ["known1"], state)
    headers = os.path.join(cache.folder(state, ROOT, "known1"), cache.HEADERS)
    remembered = cache.remembered(os.path.dirname(headers))
    assert sorted(remembered) == [f"embeddings-{b:06d}.npz" for b in range(3)]
    assert [(h.rows, h.images, h.version) for h in remembered.values()] == [
        (p.rows, p.images, p.version) for p in first.parts]
    bucket.delete_object(Bucket=BUCKET, Key="team/dumps/known1/embeddings-000001.npz")
    gone = open_collection(ROOT, ["known1"], state)
    assert len(gone) == 200 and sorted(cache.remembered(os.path.dirname(headers))) == [
        "embeddings-000000.npz", "embeddings-000002.npz"]
    for spoil in ("a link", "not json", "too large"):
        os.unlink(headers)
        if spoil == "a link":
            os.symlink(tmp_path / "elsewhere.json", headers)
        elif spoil == "not json":
            with open(headers, "w") as file:
                file.write("{")
        else:
            with open(headers, "wb") as file:
                file.truncate(cache.MAX_HEADERS_BYTES + 1)
        gets = s3.requests("GET")
        assert open_collection(ROOT, ["known1"], state).digest == gone.digest
        assert s3.requests("GET") - gets == 2 and os.path.isfile(headers) and not os.path.islink(headers)


def test_an_object_written_again_while_the_collection_is_searched_is_one_line_and_leaves_no_index(
        bucket, builds, tmp_path):
    state = str(tmp_path / "state")
    vectors = clustered(200)
    write_job(ROOT, "rewritten1", vectors, batch=100)
    collection = open_collection(ROOT, ["rewritten1"], state)
    write_job(ROOT, "rewritten1", clustered(200, seed=9), batch=100)  # a redelivered batch, other bytes
    with pytest.raises(BatchFileError, match="written again while the collection was searched") as raised:
        search.top_k(collection, vectors[0], 3, approximate_above=0)
    assert "\n" not in str(raised.value) and len(builds) == 1
    assert not os.path.exists(search.index_file(collection))
    assert os.listdir(os.path.dirname(search.index_file(collection))) == ["batches.json"]  # headers only


def test_a_cache_folder_where_nothing_can_be_written_is_one_line_before_the_build(bucket, builds, tmp_path):
    state = tmp_path / "state"
    state.write_text("a file where the state folder should be")
    write_job(ROOT, "nowhere1", clustered(100))
    collection = open_collection(ROOT, ["nowhere1"], str(state))
    with pytest.raises(search.IndexUnavailable, match="cannot be cached in") as raised:
        search.top_k(collection, clustered(100)[0], 3, approximate_above=0)
    assert "\n" not in str(raised.value) and str(state) in str(raised.value) and builds == []


def test_the_local_cache_of_an_s3_collection_is_opened_by_imgqs_file_rules(bucket, builds, tmp_path):
    state = str(tmp_path / "state")
    vectors = clustered(100)
    write_job(ROOT, "ruled1", vectors)
    collection = open_collection(ROOT, ["ruled1"], state)
    path = search.index_file(collection)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(tmp_path / "elsewhere", path)
    with pytest.raises(search.IndexUnavailable, match="symbolic link"):
        search.top_k(collection, vectors[0], 3, approximate_above=0)
    os.unlink(path)
    with open(path, "wb") as file:
        file.truncate(search.max_index_bytes(collection) + 1)  # sparse: no disk is used
    with pytest.raises(search.IndexUnavailable, match="more than the"):
        search.top_k(collection, vectors[0], 3, approximate_above=0)
    assert builds == []


@pytest.fixture
def s3_settings(settings, s3, bucket):
    return dataclasses.replace(settings, dump_root=ROOT, s3_endpoint_url=s3.endpoint)


def test_similar_and_duplicates_use_the_index_of_an_s3_dump_root(s3_settings, s3, monkeypatch, tmp_path):
    from tests.processes import imgq_cli

    def run(*args, settings=s3_settings):
        return imgq_cli(settings, *args, check=False, env=s3.credentials)

    write_job(ROOT, "moments1", clustered(400))
    exact = run("similar", "moments1", "123", "-k", "9", "--json")
    exact_pairs = run("duplicates", "moments1", "--max-distance", "0", "--moment", "0.7")
    assert exact.exit_code == 0 and exact_pairs.exit_code == 0, exact.output + exact_pairs.output
    monkeypatch.setattr(search, "APPROXIMATE_ABOVE", 399)
    monkeypatch.setattr(search, "PAIRS_APPROXIMATE_ABOVE", 399)
    indexed = run("similar", "moments1", "123", "-k", "9", "--json")
    assert indexed.exit_code == 0, indexed.output
    cache = os.path.join(s3_settings.state_dir, "indexes")
    assert "Building the approximate index of 400 photos, once: " + cache in indexed.stderr
    assert {json.loads(line)["image"] for line in indexed.stdout.splitlines()} == mates(123)
    assert {json.loads(line)["image"] for line in exact.stdout.splitlines()} == mates(123)
    gets = s3.requests("GET")
    again = run("similar", "moments1", "123", "-k", "9", "--json")
    assert again.stdout == indexed.stdout and "Building" not in again.stderr
    assert s3.requests("GET") - gets == 2  # the query's row and the hits' paths: the one object, read twice
    pairs = run("duplicates", "moments1", "--max-distance", "0", "--moment", "0.7")
    assert pairs.exit_code == 0, pairs.output
    assert "found by the approximate index (" + cache in pairs.stderr and pairs.stdout == exact_pairs.stdout

    (tmp_path / "a-file").write_text("not a folder")
    blocked = dataclasses.replace(s3_settings, state_dir=str(tmp_path / "a-file"))
    refused = run("similar", "moments1", "123", settings=blocked)  # its state folder is a file: nothing goes there
    assert refused.exit_code == 1 and "Traceback" not in refused.output, refused.output
    assert refused.stdout == "" and refused.stderr.splitlines()[-1].startswith("Error: The approximate index of "
                                                                               "400 photos cannot be cached in ")
