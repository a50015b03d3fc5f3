"""The object-storage settings and roots at their edges: IMGQ_ALLOWED_ROOTS with s3:// entries (imgq/settings.py),
IMGQ_S3_ENDPOINT_URL and IMGQ_S3_REGION, and how a URL is found within a root (imgq/storage/roots.py)."""

from __future__ import annotations

import os

import pytest

from imgq.settings import Settings
from imgq.storage.locate import is_path, source_for
from imgq.storage.roots import is_url, outside_roots, within_roots


def test_allowed_roots_mix_folders_and_urls_and_round_trip(tmp_path):
    raw = os.pathsep.join([str(tmp_path / "x" / ".."), "s3://photos/2024/", "s3://archive"])
    settings = Settings.from_env({"IMGQ_ALLOWED_ROOTS": raw})
    assert settings.allowed_roots == (str(tmp_path), "s3://photos/2024", "s3://archive")
    assert Settings.from_env(settings.as_env()) == settings


@pytest.mark.parametrize("entry", ["s3://", "s3:///key", "http://host/x", "gs://bucket/x", "s3://b/x/../y",
                                   "s3://b//x", "s3://b/./x"])
def test_a_root_url_that_is_not_a_bucket_prefix_is_refused(entry):
    with pytest.raises(ValueError, match="IMGQ_ALLOWED_ROOTS") as caught:
        Settings.from_env({"IMGQ_ALLOWED_ROOTS": entry})
    assert repr(entry) in str(caught.value)


@pytest.mark.parametrize(("url", "roots", "inside"), [
    ("s3://b/photos/a.jpg", ("s3://b/photos",), True),
    ("s3://b/photos/a.jpg", ("s3://b",), True),
    ("s3://b/photos", ("s3://b/photos",), True),
    ("s3://b/photos2/a.jpg", ("s3://b/photos",), False),  # a prefix of the name, not a folder above it
    ("s3://bb/photos/a.jpg", ("s3://b",), False),
    ("s3://b/photos/../secret.jpg", ("s3://b/photos",), False),  # a store may resolve the '..'
    ("s3://b/photos//a.jpg", ("s3://b/photos",), False),
    ("s3://b/photos/a.jpg", ("/photos",), False),  # a worker given only folders reads no bucket
    ("s3://b/photos/a.jpg", (), True),  # no roots: no restriction
])
def test_a_url_is_within_a_url_root_on_a_slash_boundary(url, roots, inside):
    assert within_roots(url, roots) is inside


def test_a_path_is_never_within_a_url_root(tmp_path):
    assert not within_roots(str(tmp_path / "a.jpg"), ("s3://b",))
    assert within_roots(str(tmp_path / "a.jpg"), ("s3://b", str(tmp_path)))
    assert outside_roots(["s3://b/x.jpg", str(tmp_path / "y.jpg")], (str(tmp_path),)) == "s3://b/x.jpg"


def test_urls_and_paths_are_told_apart():
    assert is_url("s3://b/x") and not is_url("/data/s3://x") and not is_url("photos/a.jpg")
    assert not is_path("s3://b/x") and is_path("s3:/b/x") and is_path("./s3:")
    assert type(source_for("s3://b/x")).__name__ == "S3Objects"


@pytest.mark.parametrize("value", ["http://127.0.0.1:8333", "https://s3.example.com/", "https://x.r2.dev:443/base"])
def test_an_endpoint_url_is_http_or_https(value):
    assert Settings.from_env({"IMGQ_S3_ENDPOINT_URL": value}).s3_endpoint_url == value.rstrip("/")


@pytest.mark.parametrize(("value", "says"), [
    ("127.0.0.1:8333", "http:// or https://"), ("ftp://host", "http:// or https://"), ("http://", "with a host"),
    ("http://host:99999", "port"), ("http://host/?x=1", "query"),
])
def test_a_bad_endpoint_url_is_refused_in_one_line(value, says):
    with pytest.raises(ValueError, match="IMGQ_S3_ENDPOINT_URL") as caught:
        Settings.from_env({"IMGQ_S3_ENDPOINT_URL": value})
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_an_endpoint_url_with_credentials_is_refused_without_quoting_them():
    with pytest.raises(ValueError) as caught:
        Settings.from_env({"IMGQ_S3_ENDPOINT_URL": "http://AKIAKEY:topsecret@host:9000"})
    assert "AWS_ACCESS_KEY_ID" in str(caught.value) and "topsecret" not in str(caught.value)


@pytest.mark.parametrize(("value", "good"), [("us-east-1", True), ("auto", True), ("eu-west-3", True),
                                             ("US-EAST-1", False), ("-x", False), ("a" * 64, False),
                                             ("us east", False)])
def test_a_region_is_a_region_name(value, good):
    if good:
        assert Settings.from_env({"IMGQ_S3_REGION": value}).s3_region == value
    else:
        with pytest.raises(ValueError, match="IMGQ_S3_REGION"):
            Settings.from_env({"IMGQ_S3_REGION": value})
