"""`imgq learn` from an s3:// examples prefix, each label a sub-prefix, against a real S3 server (SeaweedFS's weed
mini, tests/s3server.py): the examples as learn finds them (no worker), and its one-line refusals. The fit itself on
objects runs end to end with a real worker in tests/test_s3_e2e.py."""

from __future__ import annotations

import uuid

import pytest

from producer import learn

BUCKET = "imgq-learn"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 60


@pytest.fixture(scope="module")
def client(s3_server):
    return s3_server.bucket(BUCKET)


@pytest.fixture
def examples(s3, client):
    """``put(key)`` under a prefix of its own; returns ``(url, put)``."""
    prefix = f"ex-{uuid.uuid4().hex[:8]}/"

    def put(key: str, data: bytes = JPEG) -> None:
        client.put_object(Bucket=BUCKET, Key=prefix + key, Body=data)

    return f"s3://{BUCKET}/{prefix}", put


def test_examples_are_one_sub_prefix_per_label(examples):
    url, put = examples
    for label, n in (("beach", 5), ("not-beach", 6)):
        for i in range(n):
            put(f"{label}/{i}.jpg")
    put("beach/notes.txt", b"not an image")
    put(".hidden/0.jpg")
    put("loose.jpg")  # beside the label folders: no label
    for root in (url, url.rstrip("/")):
        found = learn.find_examples(root)
        assert found.labels == ("beach", "not-beach")
        assert found.images["beach"] == [f"{url}beach/{i}.jpg" for i in range(5)]
        assert len(found.images["not-beach"]) == 6 and found.skipped == [f"{url}beach/notes.txt"]


@pytest.mark.parametrize("counts, says", [
    ({}, "has no label folders: make one folder per label, e.g. s3://"),
    ({"beach": 5}, "has one label folder"),
    ({"beach": 5, "sea": 3}, "sea has 3 images"),
    ({"beach": 5, "a|b": 5}, "the folder's name is the label"),
])
def test_examples_that_cannot_be_learned_say_which_prefix(examples, counts, says):
    url, put = examples
    for label, n in counts.items():
        for i in range(n):
            put(f"{label}/{i}.jpg")
    with pytest.raises(learn.ExamplesError, match="\\A[^\n]*" + says.replace("|", "\\|")):
        learn.find_examples(url)


def test_no_such_bucket_is_one_line(run, s3, tmp_path):
    result = run("learn", f"s3://no-such-{uuid.uuid4().hex[:8]}/examples", "-o", str(tmp_path / "h.head.json"),
                 env=s3.env)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Cannot list s3://no-such-") and "no such bucket" in lines[0]
    assert not (tmp_path / "h.head.json").exists()
