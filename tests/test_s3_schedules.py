"""Schedules over s3:// prefixes against a real S3 server (SeaweedFS's weed mini, tests/s3server.py) and a real
Redis: `imgq schedule add NAME s3://bucket/prefix`, and ticks that tell new and changed objects by the ETag, size
and last-modified time their LIST pages carry (no HEAD per object). The records a worker would write are
written as tests/test_schedules.py writes them."""

from __future__ import annotations

import time
import uuid

import pytest

from imgq.storage import s3 as s3_source
from tests.test_schedules import classify, job_paths

BUCKET = "imgq-schedules"


@pytest.fixture(scope="module")
def bucket(s3_server):
    return s3_server.bucket(BUCKET)


@pytest.fixture
def prefix(s3, bucket):
    """A prefix of its own in the bucket, holding five images (and a video); returns ``(url, put)``."""
    client = bucket
    key = f"p-{uuid.uuid4().hex[:8]}/"

    def put(name: str, data: bytes) -> str:
        client.put_object(Bucket=BUCKET, Key=key + name, Body=data)
        return f"s3://{BUCKET}/{key}{name}"

    for i in range(5):
        put(f"{i}.jpg" if i < 3 else f"sub/{i}.jpg", b"x" * (i + 1))
    put("clip.MOV", b"a video")
    return f"s3://{BUCKET}/{key}", put


@pytest.fixture
def run(settings, s3):
    from tests.processes import imgq_cli

    return lambda *args: imgq_cli(settings, *args, check=False, env=s3.env)


@pytest.fixture
def calls():
    """The requests imgq's S3 client makes, by operation name."""
    made: list[str] = []

    def count(model, **_):
        made.append(model.name)

    s3_source.client().meta.events.register("before-call.s3", count)
    yield made
    s3_source.client().meta.events.unregister("before-call.s3", count)


def test_a_schedule_on_a_prefix_submits_what_is_new_or_changed(run, prefix, store, book, calls):
    url, put = prefix
    added = run("schedule", "add", "bucket", url.rstrip("/"), "--every", "1h")
    assert added.exit_code == 0, added.output
    assert book.get("bucket").paths == (url.rstrip("/"),)

    first = run("schedule", "run", "bucket")
    job = first.stdout.strip()
    assert "Queued 5 images (5 new, 0 changed, 0 retried)" in first.stderr and "1 .MOV" in first.stderr
    assert sorted(job_paths(store, job)) == sorted(f"{url}{n}" for n in ("0.jpg", "1.jpg", "2.jpg", "sub/3.jpg",
                                                                         "sub/4.jpg"))
    classify(store, job)

    calls.clear()
    second = run("schedule", "run", "bucket")
    assert second.stdout == "" and "nothing new or changed" in second.stderr
    assert book.runs("bucket")[0]["found"]["unchanged"] == 5
    assert "ListObjectsV2" in calls and "HeadObject" not in calls and "GetObject" not in calls  # LIST pages alone

    time.sleep(1.1)  # a last-modified time of whole seconds
    put("1.jpg", b"other bytes")
    put("sub/new.jpg", b"new")
    third = run("schedule", "run", "bucket").stdout.strip()
    assert sorted(job_paths(store, third)) == [f"{url}1.jpg", f"{url}sub/new.jpg"]
    assert book.runs("bucket")[0]["found"] == {"new": 1, "changed": 1, "retried": 0, "unchanged": 4,
                                               "given_up": 0, "vanished": 0}
    assert "HeadObject" not in calls


def test_a_prefix_that_cannot_be_listed_is_a_skipped_run_in_one_line(run, prefix, book, store):
    url, _ = prefix
    missing = f"s3://no-such-{uuid.uuid4().hex[:8]}/photos"
    assert run("schedule", "add", "gone", missing, "--every", "1h").exit_code == 0
    result = run("schedule", "run", "gone")
    assert result.exit_code == 0 and result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert "skipped" in result.stderr and "no such bucket" in result.stderr, result.stderr
    assert book.get("gone").pending_job is None and book.runs("gone")[0]["outcome"] == "skipped"


@pytest.fixture
def book(settings, store):
    from imgq.schedules.schedule import ScheduleBook

    return ScheduleBook(store, settings)
