"""s3:// prefixes as a destination: activation dumps, embedding files and Parquet sink files written as objects on
Amazon S3 or an S3-compatible store, with the same layout of keys as a local folder's paths (see
imgq/storage/destination.py for the contract; docs/object-storage.md).

A file is written whole into a spooled buffer (memory up to ``SPOOL_BYTES``, a temporary file beyond) and sent
as one PUT when the writer is done with it. S3 makes an object visible only once its PUT has completed, and
whole: there is no half-written object to see, and a writer killed before the PUT leaves nothing under the key;
what the local folder gets from a temporary name and a rename, a store gets from the PUT itself. A PUT is
durable once acknowledged. One PUT takes up to 5 GB, more than any file imgq writes (a dump is capped at 2 GB,
a batch file at 1 GB).

Through imgq/storage/s3.py's client: the same endpoint (IMGQ_S3_ENDPOINT_URL), region, retries with backoff and
standard credential chain as reading; messages carry error codes, never the credentials or the store's text.
Costs: one PUT per file written, one GET per file read, one LIST per 1000 names, one DELETE per file removed.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, cast

from imgq.storage import s3
from imgq.storage.destination import PROBE_NAME, Destination, StoreError, write_refused
from imgq.storage.errors import ImageError, ListingError, SourceUnavailable
from imgq.storage.files import RefusedFile

SPOOL_BYTES = 64 * 1024**2
# A file up to this size is held in memory until its PUT (a dump of a few layers, a batch's embeddings or Parquet
# file: a few MB); a larger one spills to a temporary file, so a 2 GB dump of every layer never sits in memory.


class S3Prefix(Destination):
    """``s3://bucket/prefix`` locations."""

    def owns(self, location: str) -> bool:
        return location.startswith(s3.SCHEME)

    @contextmanager
    def writing(self, location: str, *, durable: bool = False) -> Iterator[BinaryIO]:
        bucket, key = _object(location, write_refused)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as file:
            yield cast(BinaryIO, file)
            size = file.tell()
            file.seek(0)
            _asked(location, write_refused, "write",
                   lambda c: c.put_object(Bucket=bucket, Key=key, Body=file, ContentLength=size))

    @contextmanager
    def open(self, location: str, max_bytes: int) -> Iterator[BinaryIO]:
        """One GET; the size is checked on the reply's headers before a byte of the body is read, and the body is
        read whole (at most ``max_bytes`` + 1 bytes, whatever the headers said) and served from memory."""
        bucket, key = _object(location, _read_refused)
        reply = _asked(location, _read_refused, "read", lambda c: c.get_object(Bucket=bucket, Key=key))
        body = reply["Body"]
        try:
            size = reply.get("ContentLength")
            if size is not None and size > max_bytes:
                raise RefusedFile(f"{size} bytes, more than the {max_bytes} bytes imgq reads")
            data = _read_capped(location, body, max_bytes)
        finally:
            body.close()
        yield _Read(data, _object_version(len(data), reply.get("ETag", "")))

    def exists(self, location: str) -> bool:
        """One HEAD; False when there is no such object, or the store does not say (refused, away)."""
        try:
            bucket, key = _object(location, _read_refused)
            s3.request(lambda c: c.head_object(Bucket=bucket, Key=key))
        except (OSError, ImageError, SourceUnavailable, ListingError):
            return False
        return True

    def names(self, folder: str) -> list[str]:
        """A LIST with the delimiter '/' (one per 1000 names): the objects directly under ``folder/``."""
        return [name for name, _ in self.listing(folder)]

    def listing(self, folder: str) -> list[tuple[str, str]]:
        """``names``' LIST, each object's version from its entry (size and ETag)."""
        bucket, key = _split(folder, _read_refused)
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""

        def listing(client) -> list[tuple[str, str]]:
            found: list[tuple[str, str]] = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                found += [(item["Key"][len(prefix):], _object_version(item.get("Size", 0), item.get("ETag", "")))
                          for item in page.get("Contents", ())]
            # A folder marker (the key ``prefix/`` itself, which some stores such as SeaweedFS keep once a folder's
            # last object is deleted) is not a file.
            return [(name, version) for name, version in found if name and not name.endswith("/")]

        try:
            return sorted(_asked(folder, _read_refused, "list", listing))
        except FileNotFoundError:  # no such bucket: nothing is there
            return []

    def version(self, file: BinaryIO) -> str:
        return cast(_Read, file).version

    def remove(self, location: str) -> None:
        """One DELETE (S3 answers the same whether the object was there or not)."""
        bucket, key = _object(location, _read_refused)
        with contextlib.suppress(FileNotFoundError):
            _asked(location, _read_refused, "remove", lambda c: c.delete_object(Bucket=bucket, Key=key))

    def remove_folder(self, folder: str) -> None:
        """Nothing: a prefix is no object, it is gone with its last key."""

    def check_writable(self, root: str) -> None:
        """A HEAD of the bucket, then a PUT of an empty object under the root and its DELETE (a store that lets imgq
        write but not remove keeps the empty probe, overwritten at each start). The HEAD first: some stores
        (SeaweedFS) make a missing bucket on a PUT rather than refuse it, where S3 answers NoSuchBucket."""
        probe = os.path.join(root, PROBE_NAME)
        bucket, _ = _split(root, write_refused)
        try:
            _asked(probe, write_refused, "check", lambda c: c.head_bucket(Bucket=bucket))
        except FileNotFoundError:
            raise write_refused(probe, "no such bucket") from None
        with self.writing(probe):
            pass
        with contextlib.suppress(OSError):
            self.remove(probe)


class _Read(io.BytesIO):
    """An object's body as ``open`` read it, with its version (``listing``'s)."""

    def __init__(self, data: bytes, version: str):
        super().__init__(data)
        self.version = version


def _object_version(size: int, etag: str) -> str:
    """An object's size and ETag (the store's digest of its content; a multipart upload's is another digest, but
    a PUT of other content always gets another), its quotes left out: a store that quotes it in a GET's headers
    and not in its LIST pages, or the other way round, gives one version."""
    unquoted = etag.strip().strip('"')
    return f"{size}:{unquoted}"


def _read_refused(location: str, reason: str) -> OSError:
    return StoreError(f"Cannot read {location}: {reason}.")


def _split(location: str, refused: Callable[[str, str], OSError]) -> tuple[str, str]:
    try:
        return s3.split_url(location)
    except ValueError as exc:
        raise refused(location, str(exc)) from None


def _object(location: str, refused: Callable[[str, str], OSError]) -> tuple[str, str]:
    """``(bucket, key)`` of the object at ``location``: a URL with a key that is not a prefix."""
    bucket, key = _split(location, refused)
    if not key or key.endswith("/"):
        raise refused(location, "a prefix (a folder), not an object")
    return bucket, key


def _asked(location: str, refused: Callable[[str, str], OSError], doing: str, call: Callable[[Any], Any]) -> Any:
    """``call(client)``; FileNotFoundError for no such object or bucket when reading, else ``refused(location,
    why)`` for every failure: refused access (with where credentials come from), no such bucket, no answer after
    the client's retries, boto3 missing."""
    try:
        return s3.request(call)
    except ImageError as exc:
        if exc.code == "missing" and doing != "write":
            raise FileNotFoundError(f"No such object: {location}") from None
        hint = f"; check the credentials: {s3.CREDENTIALS_HINT}" if exc.code == "forbidden" else ""
        raise refused(location, f"{exc.message}{hint}") from None
    except (SourceUnavailable, ListingError) as exc:
        raise refused(location, str(exc).rstrip(".")) from None


def _read_capped(location: str, body, max_bytes: int) -> bytes:
    """At most ``max_bytes`` + 1 bytes of a GET's body; RefusedFile when there are more (a reply without a length,
    or one that ran over it), StoreError when the connection is cut."""
    chunks, total = [], 0
    try:
        while total <= max_bytes:
            chunk = body.read(min(s3.READ_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except Exception as exc:  # urllib3's and botocore's errors alike
        raise _read_refused(location, f"the connection was cut ({type(exc).__name__})") from None
    if total > max_bytes:
        raise RefusedFile(f"more than the {max_bytes} bytes imgq reads")
    return b"".join(chunks)
