"""Where bytes come from: one contract (imgq/storage/base.py's ByteSource) and one test class run against every
byte source, as huey runs one storage test mixin against each of its backends. A new source adds a subclass of
``ByteSourceContract`` that says how to put an object in it; every test below then runs against it unchanged:
local files, and s3:// objects on a real S3 server (``TestS3Objects``, skipped without the weed binary)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from imgq.storage.base import ByteSource
from imgq.storage.errors import ImageError, ListingError, SourceUnavailable
from imgq.storage.local import LocalFiles
from imgq.storage.locate import source_for
from imgq.storage.selection import PathFilter, Skipped

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 60  # content does not matter to a source: it serves bytes


class ByteSourceContract:
    """The promises of ByteSource, for any implementation. Subclasses provide ``source`` (the ByteSource),
    ``root`` (a location under which ``put`` writes) and ``put(name, data) -> location``."""

    source: ByteSource

    def put(self, name: str, data: bytes) -> str:
        raise NotImplementedError

    def location(self, name: str) -> str:
        raise NotImplementedError

    def test_it_owns_its_locations(self):
        location = self.put("a.jpg", JPEG)
        assert self.source.owns(location) and source_for(location) is not None
        assert type(source_for(location)) is type(self.source)

    def test_absolute_is_idempotent(self):
        location = self.source.absolute(self.put("a.jpg", JPEG))
        assert self.source.absolute(location) == location

    def test_open_serves_the_bytes(self):
        location = self.put("a.jpg", JPEG)
        with self.source.open(location, (), len(JPEG)) as file:
            assert file.read() == JPEG

    def test_a_missing_location_is_missing(self):
        with pytest.raises(ImageError) as caught, self.source.open(self.location("none.jpg")):
            pass
        assert caught.value.code == "missing"

    def test_an_empty_object_is_not_an_image(self):
        with pytest.raises(ImageError) as caught, self.source.open(self.put("empty.jpg", b"")):
            pass
        assert caught.value.code == "not_an_image"

    def test_the_size_cap_is_checked_before_the_body_is_read(self):
        location = self.put("big.jpg", JPEG)
        with pytest.raises(ImageError) as caught, self.source.open(location, (), len(JPEG) - 1):
            pass
        assert caught.value.code == "too_large" and str(len(JPEG)) in caught.value.message

    def test_outside_the_allowed_roots_is_forbidden_and_says_nothing_more(self):
        location = self.put("a.jpg", JPEG)
        elsewhere = (self.source.absolute(self.location("elsewhere")),)
        for asked in (location, self.location("none.jpg")):  # not even whether it exists
            with pytest.raises(ImageError) as caught, self.source.open(asked, elsewhere):
                pass
            assert caught.value.code == "forbidden" and caught.value.message == "outside the allowed roots"

    def test_inside_the_allowed_roots_is_served(self):
        location = self.put("sub/a.jpg", JPEG)
        with self.source.open(location, (self.source.absolute(self.root),), None) as file:
            assert file.read(4) == JPEG[:4]

    def test_a_version_holds_while_the_content_does_and_changes_with_it(self):
        location = self.put("a.jpg", JPEG)
        first = self.source.version(location)
        assert first is not None and first == self.source.version(location)
        self.put("a.jpg", JPEG + b"more")
        assert self.source.version(location) not in (None, first)
        assert self.source.version(self.location("none.jpg")) is None

    def test_listed_versions_are_the_listing_with_what_version_says(self):
        for name in ("a.jpg", "b.png", "sub/c.jpg", "notes.txt"):
            self.put(name, JPEG)
        root = self.source.absolute(self.root)
        listed = list(self.source.list_versions(root, PathFilter()))
        assert [found for found, _ in listed] == list(self.source.list(root, PathFilter()))
        assert [version for _, version in listed] == [self.source.version(found) for found, _ in listed]
        assert all(version is not None for _, version in listed)
        time.sleep(1.1)  # a last-modified time of whole seconds, or a file's mtime: later either way
        self.put("b.png", JPEG + b"other bytes")
        again = dict(self.source.list_versions(root, PathFilter()))
        assert again[listed[1][0]] not in (None, listed[1][1]) and again[listed[0][0]] == listed[0][1]
        named = self.source.absolute(self.location("a.jpg"))
        assert list(self.source.list_versions(named, PathFilter())) == [(named, listed[0][1])]

    def test_folders_are_the_sub_folders_by_name_without_hidden_ones(self):
        for name in ("b/x.jpg", "a/y.jpg", ".hidden/z.jpg", "top.jpg", "a/deeper/w.jpg"):
            self.put(name, JPEG)
        root = self.source.absolute(self.root)
        assert self.source.folders(root) == [self.source.absolute(self.location(n)) for n in ("a", "b")]
        assert self.source.folders(self.source.absolute(self.location("a"))) == [
            self.source.absolute(self.location("a/deeper"))]
        assert self.source.folders(self.source.absolute(self.location("b"))) == []

    def test_a_single_image_is_listed_as_it_is(self):
        location = self.source.absolute(self.put("notes.txt", b"not an image, named: the worker says so"))
        assert list(self.source.list(location, PathFilter())) == [location]

    def test_a_listing_is_sorted_chosen_by_name_and_counts_the_rest(self):
        for name in ("b.jpg", "a.png", "c.JPG", "sub/d.jpeg", "clip.MOV", "readme.txt", ".hidden.jpg"):
            self.put(name, JPEG)
        skipped = Skipped()
        found = list(self.source.list(self.source.absolute(self.root), PathFilter(), skipped))
        names = [f.rsplit("/", 1)[-1] for f in found]
        assert names == ["a.png", "b.jpg", "c.JPG", "d.jpeg"]  # files first, then sub-folders, each sorted
        assert skipped.total == 2 and skipped.by_kind == {".MOV": 1, ".txt": 1}
        flat = list(self.source.list(self.source.absolute(self.root), PathFilter(recursive=False)))
        assert [f.rsplit("/", 1)[-1] for f in flat] == ["a.png", "b.jpg", "c.JPG"]
        excluded = list(self.source.list(self.source.absolute(self.root), PathFilter(excludes=("sub", "b.*"))))
        assert [f.rsplit("/", 1)[-1] for f in excluded] == ["a.png", "c.JPG"]

    def test_a_listing_is_streamed(self):
        for index in range(30):
            self.put(f"f{index:02}/x.jpg", JPEG)
        listing = self.source.list(self.source.absolute(self.root), PathFilter())
        assert next(listing).endswith("f00/x.jpg")  # the first image comes before the tree is read whole


class TestLocalFiles(ByteSourceContract):
    @pytest.fixture(autouse=True)
    def _folder(self, tmp_path):
        self.root = str(tmp_path / "root")
        os.makedirs(self.root)
        self.source = LocalFiles()

    def location(self, name: str) -> str:
        return os.path.join(self.root, name)

    def put(self, name: str, data: bytes) -> str:
        path = Path(self.location(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    # What only files have: links, pipes, sparse files.

    def test_a_fifo_is_refused_without_blocking(self):
        fifo = self.location("pipe.jpg")
        os.mkfifo(fifo)
        outcome: list = []

        def attempt():
            try:
                with self.source.open(fifo):
                    outcome.append("opened")
            except ImageError as exc:
                outcome.append(exc.code)

        thread = threading.Thread(target=attempt, daemon=True)
        thread.start()
        thread.join(10)
        assert outcome == ["unreadable"]

    def test_a_huge_sparse_file_costs_its_metadata(self):
        huge = self.location("huge.jpg")
        with open(huge, "wb") as file:
            file.truncate(8 * 1024**3)
        started = time.monotonic()
        with pytest.raises(ImageError) as caught, self.source.open(huge, (), 1024):
            pass
        assert caught.value.code == "too_large" and time.monotonic() - started < 5

    def test_a_link_out_of_the_roots_is_forbidden(self, tmp_path):
        outside = tmp_path / "secret.jpg"
        outside.write_bytes(JPEG)
        link = self.location("link.jpg")
        os.symlink(outside, link)
        with pytest.raises(ImageError) as caught, self.source.open(link, (self.root,)):
            pass
        assert caught.value.code == "forbidden" and "secret" not in caught.value.message

    def test_a_symlinked_folder_is_not_walked(self, tmp_path):
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "x.jpg").write_bytes(JPEG)
        os.symlink(elsewhere, self.location("linked"))
        self.put("a.jpg", JPEG)
        assert [f.rsplit("/", 1)[-1] for f in self.source.list(self.root, PathFilter())] == ["a.jpg"]

    def test_a_folder_with_an_ignore_marker_is_left_out(self):
        self.put("keep/a.jpg", JPEG)
        self.put("skip/b.jpg", JPEG)
        self.put("skip/.nomedia", b"")
        assert [f.rsplit("/", 1)[-1] for f in self.source.list(self.root, PathFilter())] == ["a.jpg"]


@pytest.fixture(scope="session")
def contract_bucket(s3_server):
    """A bucket for the contract tests; each test puts its objects under a prefix of its own."""
    name = "imgq-contract"
    s3_server.bucket(name)
    return name


class TestS3Objects(ByteSourceContract):
    """The contract against a real S3 server (SeaweedFS's weed mini, tests/s3server.py)."""

    @pytest.fixture(autouse=True)
    def _bucket(self, s3, contract_bucket):
        from imgq.storage import s3 as s3_source

        self.server, self.bucket = s3, contract_bucket
        self.prefix = f"t-{uuid.uuid4().hex[:10]}/"
        self.root = f"s3://{self.bucket}/{self.prefix}"
        self.source = s3_source.S3Objects()
        self.client = s3.client()
        self.calls: list[str] = []  # the requests imgq's client makes, by operation name
        s3_source.client().meta.events.register("before-call.s3", self._count)
        yield
        s3_source.client().meta.events.unregister("before-call.s3", self._count)

    def _count(self, model, **_) -> None:
        self.calls.append(model.name)

    def location(self, name: str) -> str:
        return self.root + name

    def put(self, name: str, data: bytes) -> str:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data)
        return self.location(name)

    def names(self, location: str | None = None, path_filter: PathFilter | None = None, skipped=None) -> list[str]:
        found = self.source.list(location or self.root, path_filter or PathFilter(), skipped)
        return [f[len(self.root):] for f in found]

    # What only object storage has: requests to count, pages, prefixes, a store that refuses or is away.

    def test_outside_the_roots_nothing_is_asked_of_the_store(self):
        location = self.put("a.jpg", JPEG)
        self.calls.clear()
        for asked in (location, self.location("sub/../a.jpg"), f"s3://other-{self.bucket}/{self.prefix}a.jpg"):
            with pytest.raises(ImageError) as caught, self.source.open(asked, (self.root + "sub",)):
                pass
            assert caught.value.code == "forbidden"
        assert self.calls == []
        with self.source.open(location, (self.root.rstrip("/"),)) as file:
            assert file.read() == JPEG
        assert self.calls == ["GetObject"]  # one request per image: its size is read from the GET's reply

    def test_a_dot_segment_never_reaches_inside_a_root(self):
        self.put("secret.jpg", JPEG)
        inside = self.root + "photos"
        for sneaky in ("photos/../secret.jpg", "photos/./../secret.jpg", "photos//x.jpg"):
            with pytest.raises(ImageError) as caught, self.source.open(self.location(sneaky), (inside,)):
                pass
            assert caught.value.code == "forbidden"

    def test_a_listing_is_fetched_page_by_page(self):
        for index in range(12):
            self.put(f"f{index:02}/x.jpg", JPEG)
        self.source.page_size = 5
        listing = self.source.list(self.root, PathFilter())
        assert next(listing).endswith("f00/x.jpg") and self.calls.count("ListObjectsV2") == 1
        assert len(list(listing)) == 11 and self.calls.count("ListObjectsV2") == 3

    def test_listed_versions_cost_the_listing_alone(self):
        for index in range(7):
            self.put(f"f{index}.jpg", JPEG)
        self.source.page_size = 5
        self.calls.clear()
        listed = list(self.source.list_versions(self.root, PathFilter()))
        assert len(listed) == 7 and all(version is not None for _, version in listed)
        assert self.calls == ["ListObjectsV2", "ListObjectsV2"]  # no HEAD per object

    def test_the_folders_of_no_such_bucket_are_one_line(self):
        with pytest.raises(ListingError, match="\\ACannot list s3://no-such-[^\n]*no such bucket"):
            self.source.folders(f"s3://no-such-{uuid.uuid4().hex[:8]}/examples")

    def test_a_prefix_is_a_folder_with_or_without_its_slash(self):
        self.put("album/a.jpg", JPEG)
        self.put("album2/b.jpg", JPEG)  # shares the prefix "album" but is not in the folder
        assert self.names(self.root + "album") == ["album/a.jpg"] == self.names(self.root + "album/")

    def test_a_named_image_is_taken_without_a_request(self):
        self.calls.clear()
        assert self.names(self.location("not-there.jpg")) == ["not-there.jpg"]  # the worker says it is missing
        assert self.calls == []

    def test_a_prefix_with_nothing_under_it_yields_nothing(self):
        assert self.names(self.location("no-such-folder")) == []

    def test_ignore_markers_hidden_folders_and_excludes(self):
        for name in ("keep/a.jpg", "skip/b.jpg", "skip/deeper/c.jpg", "skip/.nomedia", "-early/d.jpg",
                     "-early/.imgqignore", ".cache/e.jpg", "thumbs/f.jpg", "keep/-g.jpg"):
            self.put(name, JPEG)
        assert self.names() == ["keep/-g.jpg", "keep/a.jpg", "thumbs/f.jpg"]
        assert self.names(path_filter=PathFilter(excludes=("thumbs",))) == ["keep/-g.jpg", "keep/a.jpg"]
        assert self.names(path_filter=PathFilter(excludes=("*/keep/*",))) == ["thumbs/f.jpg"]

    def test_sidecars_are_not_counted_even_across_pages(self):
        for name in ("IMG_1.XMP", "IMG_1.jpg", "IMG_2.jpg", "IMG_2.jpg.xmp", "clip.MOV", "notes.xmp"):
            self.put(name, JPEG)
        self.source.page_size = 1  # every key on a page of its own: an owner always on another page
        skipped = Skipped(keep_paths=True)
        assert self.names(skipped=skipped) == ["IMG_1.jpg", "IMG_2.jpg"]
        assert skipped.by_kind == {".MOV": 1, ".xmp": 1} and skipped.paths == [self.root + "clip.MOV",
                                                                                 self.root + "notes.xmp"]

    def test_no_such_bucket_is_one_line(self):
        with pytest.raises(ListingError) as caught:
            list(self.source.list(f"s3://no-such-{self.bucket}/x/", PathFilter()))
        assert "no such bucket" in str(caught.value) and "\n" not in str(caught.value)

    def test_refused_credentials_are_one_line_without_the_secret(self, monkeypatch):
        from imgq.storage import s3 as s3_source

        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-wrong-secret")
        s3_source.forget_clients()
        with pytest.raises(ListingError) as caught:
            list(self.source.list(self.root, PathFilter()))
        message = str(caught.value)
        assert "refused access" in message and "AWS_ACCESS_KEY_ID" in message
        assert "a-wrong-secret" not in message and "\n" not in message
        with pytest.raises(ImageError) as denied, self.source.open(self.put("a.jpg", JPEG)):
            pass
        assert denied.value.code == "forbidden" and "a-wrong-secret" not in denied.value.message

    def test_a_store_away_is_unavailable_not_an_image_error(self, monkeypatch):
        from imgq.storage import s3 as s3_source
        from tests.processes import free_port

        monkeypatch.setenv("IMGQ_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens there
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
        with pytest.raises(SourceUnavailable), self.source.open(self.location("a.jpg")):
            pass
        with pytest.raises(ListingError) as caught:
            list(self.source.list(self.root, PathFilter()))
        assert "did not answer" in str(caught.value)
        assert self.source.version(self.location("a.jpg")) is None
        s3_source.forget_clients()

    def test_a_prefix_is_not_an_object(self):
        with pytest.raises(ImageError) as caught, self.source.open(self.root + "album/"):
            pass
        assert caught.value.code == "unreadable" and self.calls == []
