"""`imgq tag` on images in object storage: KEY.xmp objects written beside s3:// images with --write-objects only,
against a real S3 server (SeaweedFS's weed mini, tests/s3server.py) and a real Redis (records written through the
store directly, as tests/test_tag.py does), read back from the store, and with exiftool."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.test_tag import DARKTABLE, exiftool, needs_exiftool, store_job, top

BUCKET = "imgq-tags"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 60  # tagging reads no image: any bytes do


@pytest.fixture
def run(settings, s3):
    """``imgq ARGS`` in this process, reaching the S3 server (its endpoint and the credentials of the moment)."""
    import os

    from tests.processes import imgq_cli

    return lambda *args: imgq_cli(settings, *args, check=False,
                                  env={**s3.env, "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"]})


@pytest.fixture(scope="module")
def client(s3_server):
    return s3_server.bucket(BUCKET)


@pytest.fixture
def album(s3, client):
    """A prefix of its own holding 0.jpg, 1.jpg and 2.jpg; returns its URL."""
    prefix = f"a-{uuid.uuid4().hex[:8]}/"
    for i in range(3):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}{i}.jpg", Body=JPEG)
    return f"s3://{BUCKET}/{prefix}"


def key(url: str) -> str:
    return url[len(f"s3://{BUCKET}/"):]


def read(client, url: str) -> bytes | None:
    try:
        return client.get_object(Bucket=BUCKET, Key=key(url))["Body"].read()
    except client.exceptions.NoSuchKey:
        return None


def xmp_keys(client, album: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=key(album)).get("Contents", [])
    return sorted(item["Key"].rsplit("/", 1)[-1] for item in listed if item["Key"].endswith(".xmp"))


def one_line_error(result) -> str:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@needs_exiftool
def test_write_objects_merges_is_idempotent_and_removes_exactly_its_own(run, store, album, client, tmp_path):
    client.put_object(Bucket=BUCKET, Key=key(album) + "0.jpg.xmp", Body=DARKTABLE)
    before = exiftool(_saved(tmp_path, "before.xmp", DARKTABLE))
    job = store_job(store, [(album + "0.jpg", top(("golden_retriever", 0.8), ("tench", 0.15))),
                            (album + "1.jpg", top(("tench", 0.6))),
                            (album + "2.jpg", None)])

    result = run("tag", job, "--top", "2", "--min-score", "0.1", "--write-objects")
    assert result.exit_code == 0, result.output
    assert "1 created, 1 changed" in result.output and "1 image without labels" in result.output
    merged = exiftool(_saved(tmp_path, "0.xmp", read(client, album + "0.jpg.xmp")))
    assert merged["Subject"] == ["holiday", "golden retriever", "tench"]
    assert merged["HierarchicalSubject"] == ["places|holiday", "imgq|golden retriever", "imgq|tench"]
    assert merged["TagsList"] == ["imgq/golden retriever", "imgq/tench"]
    assert merged["Rating"] == 3 and merged["History"][0]["Operation"] == "exposure"
    created = exiftool(_saved(tmp_path, "1.xmp", read(client, album + "1.jpg.xmp")))
    assert (created["Subject"], created["HierarchicalSubject"], created["TagsList"]) == (
        ["tench"], ["imgq|tench"], ["imgq/tench"])
    assert xmp_keys(client, album) == ["0.jpg.xmp", "1.jpg.xmp"]
    assert read(client, album + "0.jpg") == JPEG  # the images are never written

    written = {name: read(client, album + name) for name in xmp_keys(client, album)}
    again = run("tag", job, "--top", "2", "--min-score", "0.1", "--write-objects")
    assert again.exit_code == 0 and "0 created, 0 changed" in again.output and "2 unchanged" in again.output
    assert {name: read(client, album + name) for name in xmp_keys(client, album)} == written

    removed = run("tag", job, "--remove", "--write-objects")
    assert removed.exit_code == 0, removed.output
    assert read(client, album + "0.jpg.xmp") == DARKTABLE  # byte for byte as darktable wrote it
    assert exiftool(_saved(tmp_path, "after.xmp", DARKTABLE)) == before
    assert xmp_keys(client, album) == ["0.jpg.xmp"]  # imgq created 1.jpg.xmp and it held nothing more


def _saved(folder, name: str, data: bytes | None):
    assert data is not None
    path = folder / name
    path.write_bytes(data)
    return path


def test_without_write_objects_a_job_with_objects_is_refused_and_nothing_is_written(run, store, album, client,
                                                                                     tmp_path):
    local = tmp_path / "x.jpg"
    local.write_bytes(JPEG)
    job = store_job(store, [(str(local), top(("tench", 0.6))), (album + "0.jpg", top(("tench", 0.6))),
                            (album + "1.jpg", top(("tench", 0.6)))])
    for extra in ([], ["--dry-run"]):
        line = one_line_error(run("tag", job, *extra))
        assert "2 images of this job are in object storage" in line and "--write-objects" in line, line
    assert xmp_keys(client, album) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["x.jpg"]


def test_dry_run_and_stem_names_write_nothing_and_then_the_stem(run, store, album, client):
    job = store_job(store, [(album + "0.jpg", top(("tench", 0.6)))])
    dry = run("tag", job, "--write-objects", "--dry-run", "--sidecar-name", "stem")
    assert dry.exit_code == 0 and f"{album}0.xmp: would create: +tench" in dry.output, dry.output
    assert xmp_keys(client, album) == []
    assert run("tag", job, "--write-objects", "--sidecar-name", "stem").exit_code == 0
    assert xmp_keys(client, album) == ["0.xmp"] and b"imgq|tench" in read(client, album + "0.xmp")


def test_an_object_changed_since_its_job_or_gone_is_not_tagged(run, store, album, client):
    job = store_job(store, [(album + "0.jpg", top(("tench", 0.6))), (album + "1.jpg", top(("tench", 0.6))),
                            (album + "2.jpg", top(("tench", 0.6)))])
    time.sleep(1.1)  # a last-modified time of whole seconds
    client.put_object(Bucket=BUCKET, Key=key(album) + "1.jpg", Body=JPEG + b"edited")
    client.delete_object(Bucket=BUCKET, Key=key(album) + "2.jpg")
    result = run("tag", job, "--write-objects")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{album}1.jpg changed at" in result.output and f"{album}2.jpg: no image there any more" in result.output
    assert xmp_keys(client, album) == ["0.jpg.xmp"]


def test_a_sidecar_object_over_the_cap_is_refused_before_its_body_and_left_alone(run, store, album, client,
                                                                                monkeypatch):
    from producer.tags import objects

    monkeypatch.setattr(objects, "SIDECAR_MAX_BYTES", 100)
    client.put_object(Bucket=BUCKET, Key=key(album) + "0.jpg.xmp", Body=DARKTABLE)
    job = store_job(store, [(album + "0.jpg", top(("tench", 0.6)))])
    result = run("tag", job, "--write-objects")
    assert result.exit_code == 1 and f"cannot read {album}0.jpg.xmp" in result.output, result.output
    assert "IMGQ_S3" not in result.output and "imgq-test-secret" not in result.output
    assert read(client, album + "0.jpg.xmp") == DARKTABLE


def test_refused_credentials_are_told_without_the_secret(run, store, album, client, monkeypatch):
    from imgq.storage import s3 as s3_source

    job = store_job(store, [(album + "0.jpg", top(("tench", 0.6)))])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    s3_source.forget_clients()
    result = run("tag", job, "--write-objects")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "refused access" in result.output and "not-the-secret" not in result.output, result.output
    assert xmp_keys(client, album) == []
