"""Object storage: ``s3://bucket/key`` locations on Amazon S3 or an S3-compatible store (MinIO, SeaweedFS, Ceph,
R2, B2), read through boto3 with no shared file system (docs/object-storage.md).

boto3 (not hand-made HTTP requests): its paginators, its standard retry modes (``standard`` here, ``adaptive``
through AWS_RETRY_MODE: backoff on throttling, 503 SlowDown, 5xx replies and timeouts) and the standard
credential chain (the environment, ~/.aws profiles, an instance's or a pod's role). imgq adds only the endpoint
of an S3-compatible store (IMGQ_S3_ENDPOINT_URL) and a region (IMGQ_S3_REGION); credentials are never imgq
settings, and never in a message, a record or a log line: messages carry error codes, not the store's text.

Costs: an image is one GET (its size is checked on the reply's headers, before a byte of the body is read);
a listing is one LIST per 1000 keys (s3_listing.py); a version is one HEAD, or nothing more when it is read
from the listing (``list_versions``: a scheduled scan). boto3 is imported when the first
s3:// location is used, not before: `imgq --help` stays fast, and a producer installed without the ``s3`` extra
works on local files.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, BinaryIO

from imgq.settings import env_var, parse_setting
from imgq.storage import s3_listing
from imgq.storage.base import ByteSource
from imgq.storage.errors import ImageError, ListingError, SourceUnavailable, one_line
from imgq.storage.roots import within_roots
from imgq.storage.selection import PathFilter, Skipped

SCHEME = "s3://"
READ_CHUNK = 1024 * 1024
VERSION_DIGEST_BYTES = 8

# Error codes of S3 and its kin, as the worker's records and the producer's messages tell them.
MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}
DENIED_CODES = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                "ExpiredToken", "TokenRefreshRequired", "AccountProblem", "AllAccessDisabled"}
BUSY_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
              "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}
# Where boto3 looks, first to last; in docker-compose.yml, the file is the aws_credentials secret.
CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the keys in the file "
                    "AWS_SHARED_CREDENTIALS_FILE names (docker-compose.yml: SECRETS_DIR/aws_credentials; "
                    "docs/object-storage.md)")


def split_url(location: str) -> tuple[str, str]:
    """``(bucket, key)`` of ``s3://bucket/key`` (the key may be empty or end with '/': a prefix).
    Raises ValueError for a URL without a bucket."""
    if not location.startswith(SCHEME):
        raise ValueError(f"Expected an s3://bucket/key URL. Received: {location!r}")
    bucket, _, key = location[len(SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"Expected a bucket after s3:// (s3://bucket/prefix). Received: {location!r}")
    return bucket, key


def endpoint() -> str:
    """IMGQ_S3_ENDPOINT_URL as the settings parse it; "" for Amazon S3."""
    return _setting("s3_endpoint_url")


def _setting(name: str) -> str:
    # Read at the first use, in the process that uses it: the worker's and the producer's environment (the
    # byte sources are module-level objects, made before any Settings). Settings.from_env has checked it.
    raw = os.environ.get(env_var(name), "")
    return parse_setting(name, raw) if raw else ""


_clients: dict[tuple[str, str, str], Any] = {}
_clients_lock = threading.Lock()


def client():
    """The boto3 S3 client for the current endpoint, region and retry mode: made once per process (boto3's
    clients are thread-safe; the decode threads share it and its connection pool)."""
    key = (endpoint(), _setting("s3_region"), os.environ.get("AWS_RETRY_MODE", "standard"))
    with _clients_lock:
        if key not in _clients:
            _clients[key] = _new_client(*key)
        return _clients[key]


def forget_clients() -> None:
    """Drop the clients made so far (the next call makes new ones, reading the credentials again)."""
    with _clients_lock:
        _clients.clear()


def _new_client(endpoint_url: str, region: str, retry_mode: str):
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ListingError("Reading s3:// locations needs boto3: pip install 'imgq[s3]'.") from None
    config = Config(
        # AWS_MAX_ATTEMPTS still chooses the attempts (standard mode: 3); the mode is standard unless
        # AWS_RETRY_MODE says adaptive (client-side rate limiting on throttling).
        retries={"mode": retry_mode},
        connect_timeout=10, read_timeout=60,
        max_pool_connections=32,  # a worker's decode threads times its concurrent batches, with room
        # S3-compatible stores serve buckets under the path (MinIO, SeaweedFS, Ceph by default); Amazon S3 is
        # left to boto3's choice. Checksums only where S3 requires them: several compatible stores refuse the
        # newer default ones.
        s3={"addressing_style": "path"} if endpoint_url else None,
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
        user_agent_extra="imgq",
    )
    session = boto3.session.Session()  # one per client: boto3's default session is not thread-safe
    return session.client("s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config)


def _where() -> str:
    return endpoint() or "Amazon S3"


def classify_error(exc: Exception) -> Exception:
    """The error ``exc`` (from boto3, made or raised by a request) stands for, in imgq's terms: an ImageError
    (missing, forbidden, unreadable) for what is about this object, SourceUnavailable for a store that did not
    answer. Messages name codes and statuses, never the store's own text (which may quote a request)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or "?"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in MISSING_CODES or status == 404:
            return ImageError("missing", "no such bucket" if code == "NoSuchBucket" else "no such object")
        if code in DENIED_CODES or status == 403:
            return ImageError("forbidden", f"the object store refused access ({code})")
        if code in BUSY_CODES or status >= 500:
            return SourceUnavailable(f"{_where()} answered {code} (HTTP {status}), after retries")
        return ImageError("unreadable", f"the object store refused the request ({code}, HTTP {status})")
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return ImageError("unreadable", f"no S3 credentials: {one_line(exc)}; {CREDENTIALS_HINT}")
    if isinstance(exc, BotoCoreError):  # connection refused, timeouts, a reply cut short: after boto3's retries
        return SourceUnavailable(f"{_where()} did not answer: {one_line(exc)}")
    if isinstance(exc, (OSError, ValueError)) and not isinstance(exc, ImageError):
        return SourceUnavailable(f"{_where()}: {one_line(exc)}")  # urllib3's reset connections, mid-body
    return exc


def request(call: Callable[[Any], Any]) -> Any:
    """``call(client)``, its failures as classify_error says. A ListingError (boto3 missing) passes as it is."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call(client())
    except (BotoCoreError, ClientError, OSError) as exc:
        raise classify_error(exc) from None


class S3Objects(ByteSource):
    """``s3://bucket/key`` locations (see ByteSource for the contract; the listing: s3_listing.py)."""

    page_size = 1000  # keys per LIST (S3's most); tests lower it to see a listing streamed

    def owns(self, location: str) -> bool:
        return location.startswith(SCHEME)

    def absolute(self, location: str) -> str:
        return location  # a URL is as absolute as it gets; keys are literal, nothing to normalise

    @contextmanager
    def open(self, location: str, allowed_roots: tuple[str, ...] = (),
             max_bytes: int | None = None) -> Iterator[BinaryIO]:
        """One GET. The roots are checked on the URL before any request, so nothing is asked about an object
        outside them; the object read is the key checked (no links in a bucket). The size comes from the reply's
        headers: an object over ``max_bytes`` or empty is refused before a byte of its body is read (the
        connection is closed, not drained). The body is read whole, capped, and served from memory: the
        decoders seek, and a connection is not held open while an image decodes.

        Raises ImageError as ByteSource.open says, SourceUnavailable when the store does not answer.
        """
        if allowed_roots and not within_roots(location, allowed_roots):
            raise ImageError("forbidden", "outside the allowed roots")
        bucket, key = _object_parts(location)
        reply = request(lambda c: c.get_object(Bucket=bucket, Key=key))
        body = reply["Body"]
        try:
            file = _read_body(body, reply.get("ContentLength"), max_bytes)
        finally:
            body.close()
        yield file

    def version(self, location: str) -> bytes | None:
        """One HEAD: a digest of the object's ETag and last-modified time (a rewrite with the same bytes keeps
        the ETag of a single-part upload, but not its time). None when it cannot be read."""
        try:
            bucket, key = _object_parts(location)
            head = request(lambda c: c.head_object(Bucket=bucket, Key=key))
        except (ImageError, SourceUnavailable, ListingError):
            return None
        return object_version(head.get("ETag"), head.get("LastModified"), head.get("ContentLength"))

    def list(self, location: str, path_filter: PathFilter, skipped: Skipped | None = None) -> Iterator[str]:
        """A URL naming an image by its name (``s3://b/x/a.jpg``, as ``path_filter`` wants it) is taken as it is,
        without a request; any other is a prefix, listed as a folder (``s3://b/photos`` and ``s3://b/photos/``
        alike), or, when nothing lies under it, an object taken as it is if it exists. Raises ListingError when
        the bucket cannot be listed (no such bucket, refused credentials, no answer)."""
        for url, _ in self._listed(location, path_filter, skipped):
            yield url

    def folders(self, location: str) -> Sequence[str]:
        """The sub-prefixes of the prefix ``location`` (a LIST with the delimiter '/': one per 1000 of them)."""
        try:
            bucket, key = split_url(location)
        except ValueError as exc:
            raise ListingError(str(exc)) from None
        ask = lambda call: list_request(call, location)  # noqa: E731
        return s3_listing.subfolders(ask, bucket, key, self.page_size)

    def list_versions(self, location: str, path_filter: PathFilter,
                      skipped: Skipped | None = None) -> Iterator[tuple[str, bytes | None]]:
        """``list``'s images with their versions read from the LIST pages (each entry's ETag, last-modified time
        and size): no request per object. An object taken without a listing entry (a URL naming an image) costs
        one HEAD, as ``version``."""
        for url, item in self._listed(location, path_filter, skipped):
            if item is None:
                yield url, self.version(url)
            else:
                yield url, object_version(item.get("ETag"), item.get("LastModified"), item.get("Size"))

    def _listed(self, location: str, path_filter: PathFilter, skipped: Skipped | None) -> Iterator[s3_listing.Listed]:
        try:
            bucket, key = split_url(location)
        except ValueError as exc:
            raise ListingError(str(exc)) from None
        ask = lambda call: list_request(call, location)  # noqa: E731
        yield from s3_listing.listed(ask, bucket, key, path_filter, skipped, self.page_size)


def object_version(etag: str | None, modified: datetime | None, size: int | None) -> bytes:
    """The version of an object from its metadata, alike from a HEAD's reply and a LIST's entry: a digest of its
    ETag, its last-modified time in whole seconds (a HEAD's header has no finer one; a rewrite with the same bytes
    keeps the ETag of a single-part upload, but not its time) and its size."""
    seconds = int(modified.timestamp()) if modified is not None else ""
    stamp = f"{etag or ''}|{seconds}|{'' if size is None else size}"
    return hashlib.blake2b(stamp.encode(), digest_size=VERSION_DIGEST_BYTES).digest()


def list_request(call: Callable[[Any], Any], location: str) -> Any:
    """``call(client)`` for a listing of ``location``: any failure is a ListingError, one line."""
    try:
        return request(call)
    except ImageError as exc:
        hint = f": check the credentials: {CREDENTIALS_HINT}" if exc.code == "forbidden" else ""
        raise ListingError(f"Cannot list {location}: {exc.message}{hint}.") from None
    except SourceUnavailable as exc:
        raise ListingError(f"Cannot list {location}: {exc}.") from None


def _object_parts(location: str) -> tuple[str, str]:
    """``(bucket, key)`` of an object's URL; ImageError('unreadable') for a malformed URL or a prefix."""
    try:
        bucket, key = split_url(location)
    except ValueError as exc:
        raise ImageError("unreadable", one_line(exc)) from None
    if not key or key.endswith("/"):
        raise ImageError("unreadable", "a prefix (a folder), not an object")
    return bucket, key


def _read_body(body, size: int | None, max_bytes: int | None) -> io.BytesIO:
    """The body of a GET in memory, its announced ``size`` checked first; never more than ``max_bytes`` + 1 bytes
    read. Written chunk by chunk into one buffer: the peak is the image, not the image twice (chunks and a join)."""
    if size == 0:
        raise ImageError("not_an_image", "empty object (0 bytes)")
    if max_bytes is not None and size is not None and size > max_bytes:
        raise ImageError("too_large", f"{size} bytes is more than {max_bytes} (IMGQ_MAX_FILE_BYTES)")
    limit = max_bytes + 1 if max_bytes is not None else None
    buffer = io.BytesIO()
    try:
        while limit is None or buffer.tell() < limit:
            chunk = body.read(READ_CHUNK if limit is None else min(READ_CHUNK, limit - buffer.tell()))
            if not chunk:
                break
            buffer.write(chunk)
    except Exception as exc:  # a connection cut mid-body: urllib3's and botocore's errors alike
        raise _cut_short(exc) from None
    total = buffer.tell()
    if max_bytes is not None and total > max_bytes:  # a reply without a length that ran over
        raise ImageError("too_large", f"more than {max_bytes} bytes (IMGQ_MAX_FILE_BYTES)")
    if not total:
        raise ImageError("not_an_image", "empty object (0 bytes)")
    buffer.seek(0)
    return buffer


def _cut_short(exc: Exception) -> Exception:
    classified = classify_error(exc)
    return classified if classified is not exc else SourceUnavailable(f"{_where()}: {one_line(exc)}")
