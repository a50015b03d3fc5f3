"""Listing ``s3://bucket/prefix`` as the walk lists a folder (imgq/storage/s3.py's S3Objects.list).

One LIST per page of up to 1000 keys (ListObjectsV2's paginator), streamed: memory holds three pages' names, never the
bucket. A recursive listing is flat (no delimiter), so that a million keys in a thousand folders cost a thousand
LISTs, not a million: images come in key order (S3 sorts keys by their UTF-8 bytes; a stable order), not
files-then-folders as on a disk. ``--no-recursive`` lists with the delimiter '/': the prefix's own objects only.

What the walk leaves out of a folder on a disk is left out here, by each key's path below the prefix: hidden
names ('.' first, of an object or of a folder above it), ``--exclude`` globs (on a name and on the whole URL),
and every key below a folder holding an ignore marker (``.nomedia``, ``.imgqignore``). A marker sorts before
nearly all of its folder's keys ('.' comes before digits, letters and '_'), so it is seen before them; for a
key whose name starts with one of `` !"#$%&'()*+,-`` (sorting before '.'), the folder is asked about its
markers first, once (two LISTs of one key).

Files the filter does not want are counted in ``Skipped``, except the XMP sidecars of images beside them. A
sidecar and its image sort close together (their names share the stem and a '.'), before or after it (an
``IMG_1.XMP`` sorts before its ``IMG_1.jpg``, an ``IMG_1.jpg.xmp`` after): a page's skipped files are decided
once the next page is read, against the images of that page and of the pages on either side of it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from imgq.storage.selection import IGNORE_MARKERS, PathFilter, Skipped, is_sidecar, sidecar_owners

Ask = Callable[[Callable[[Any], Any]], Any]  # runs a request on the client; failures become ListingError
Listed = tuple[str, dict | None]  # an image's URL and its listing entry (None: taken without a listing)
BEFORE_MARKERS = "."  # a name sorting below this sorts before its folder's markers


def listed(ask: Ask, bucket: str, key: str, path_filter: PathFilter, skipped: Skipped | None,
           page_size: int) -> Iterator[Listed]:
    """The images of ``s3://bucket/key`` (see S3Objects.list), each with its listing entry (``Key``, ``ETag``,
    ``Size``, ``LastModified``), or None for a URL taken as it is, without a listing entry."""
    url = f"s3://{bucket}/{key}"
    if key and not key.endswith("/"):
        if path_filter.wants(key.rsplit("/", 1)[-1]):
            yield url, None  # named as an image: taken as it is, like a named file; the worker says if it is none
            return
        pages = _pages(ask, bucket, key + "/", path_filter.recursive, page_size)
        first = next(pages)
        if not first.get("Contents") and not first.get("CommonPrefixes"):
            if _exists(ask, bucket, key):
                yield url, None  # an object named as it is (notes.txt): the worker says it is not an image
            return  # nothing there: nothing is queued, and the walk says no image was selected
        chooser = Chooser(ask, bucket, key + "/", path_filter, skipped)
        yield from chooser.take(first)
    else:
        pages = _pages(ask, bucket, key, path_filter.recursive, page_size)
        chooser = Chooser(ask, bucket, key, path_filter, skipped)
    for page in pages:
        yield from chooser.take(page)
    chooser.finish()


def subfolders(ask: Ask, bucket: str, key: str, page_size: int) -> list[str]:
    """The URLs of the sub-prefixes directly below ``s3://bucket/key`` (a folder), hidden ones left out, in key
    order (S3Objects.folders)."""
    prefix = key if not key or key.endswith("/") else key + "/"
    found = []
    for page in _pages(ask, bucket, prefix, False, page_size):
        for common in page.get("CommonPrefixes", ()):
            name = common["Prefix"][len(prefix):].rstrip("/")
            if name and not name.startswith("."):
                found.append(f"s3://{bucket}/{prefix}{name}")
    return found


def _pages(ask: Ask, bucket: str, prefix: str, recursive: bool, page_size: int) -> Iterator[dict]:
    """ListObjectsV2's pages under ``prefix``, fetched one at a time as they are consumed."""
    paginator = ask(lambda c: c.get_paginator("list_objects_v2"))
    delimiter = {} if recursive else {"Delimiter": "/"}
    pages = iter(paginator.paginate(Bucket=bucket, Prefix=prefix, **delimiter,
                                    PaginationConfig={"PageSize": page_size}))
    while (page := ask(lambda _: next(pages, None))) is not None:  # each next() is one request
        yield page


def _exists(ask: Ask, bucket: str, key: str) -> bool:
    """True when the object ``key`` exists: a LIST of one key (the producer may list without reading)."""
    page = ask(lambda c: c.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1))
    return any(item["Key"] == key for item in page.get("Contents", ()))


class Chooser:
    """Chooses the images of a listing page by page (see the module's docstring)."""

    def __init__(self, ask: Ask, bucket: str, prefix: str, path_filter: PathFilter, skipped: Skipped | None):
        self.ask, self.bucket, self.prefix, self.filter, self.skipped = ask, bucket, prefix, path_filter, skipped
        self.marked: set[str] = set()  # folders (key prefixes ending in '/') holding an ignore marker
        self.asked: dict[str, bool] = {}  # folders asked about their markers (keys sorting before them)
        self.images: list[dict[str, list[str]]] = [{}, {}, {}]  # the last three pages' images, by folder
        self.pending: list[tuple[str, str, str]] = []  # the last page's skipped files: (folder, url, name)

    def take(self, page: dict) -> Iterator[Listed]:
        """The URLs of ``page``'s images, each with its entry; its skipped files are counted when the next page is
        read."""
        images: dict[str, list[str]] = defaultdict(list)
        others = []
        for item in page.get("Contents", ()):
            key = item["Key"]
            relative = key[len(self.prefix):]
            if not relative or relative.endswith("/"):
                continue  # the prefix itself, or a "folder" object some consoles make: not a file
            folder, _, name = key.rpartition("/")
            folder = folder + "/" if folder else ""
            if name in IGNORE_MARKERS:
                self.marked.add(folder)
                continue
            if not self._kept(relative):
                continue
            url = f"s3://{self.bucket}/{key}"
            if self.filter.wants(name):
                images[folder].append(name)
                yield url, item
            else:
                others.append((folder, url, name))
        self.images = [*self.images[1:], images]
        self._count(self.pending)
        self.pending = others

    def finish(self) -> None:
        """Count the last page's skipped files (call once the listing is over)."""
        self.images = [*self.images[1:], {}]
        self._count(self.pending)
        self.pending = []

    def _kept(self, relative: str) -> bool:
        """False for a key left out: hidden, excluded, or below a folder with an ignore marker."""
        parts = relative.split("/")
        folder = self.prefix
        for part in parts:
            if part.startswith(".") or self.filter.excluded(f"s3://{self.bucket}/{folder}{part}", part):
                return False
            if folder in self.marked or (part < BEFORE_MARKERS and self._has_marker(folder)):
                return False
            folder = f"{folder}{part}/"
        return True

    def _has_marker(self, folder: str) -> bool:
        """Whether ``folder`` holds an ignore marker, asked of the store (once per folder)."""
        if folder not in self.asked:
            self.asked[folder] = any(self._exists(folder + marker) for marker in IGNORE_MARKERS)
            if self.asked[folder]:
                self.marked.add(folder)
        return self.asked[folder]

    def _exists(self, key: str) -> bool:
        return _exists(self.ask, self.bucket, key)

    def _count(self, pending: list[tuple[str, str, str]]) -> None:
        """Count ``pending`` skipped files (of the page before the last), but for the sidecars of the images of
        the last three pages."""
        if self.skipped is None:
            return
        for folder, url, name in pending:
            owners = sidecar_owners([name for page in self.images for name in page.get(folder, ())])
            if not is_sidecar(name, owners):
                self.skipped.add(url, name)
