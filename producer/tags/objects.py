"""XMP sidecars of objects in a store: ``KEY.xmp`` objects beside ``s3://`` images (`imgq tag --write-objects`).

The same XMP as a file sidecar gets (keywords.py, sidecars.py), read and written through the store's API with no
shared file system: an existing sidecar object is one GET, capped at SIDECAR_MAX_BYTES (its size is checked on
the reply's headers before its body is read), parsed and merged as a file sidecar is; the result is one
PutObject (a sidecar imgq created and a removal emptied: one DeleteObject). An image is looked at with one HEAD:
one modified since its job was submitted is skipped, as a changed file is. There are no links, owners or modes
in a bucket; a sidecar another program writes between imgq's GET and its PUT loses that program's edit (a store
offers no rename to make the write atomic against another writer).

Messages carry the store's error codes, never credentials (imgq.storage.s3.classify_error).
"""

from __future__ import annotations

import posixpath
import time

from imgq.contract import ResultRecord
from imgq.storage.errors import ImageError, ListingError, SourceUnavailable
from imgq.storage.s3 import S3Objects, request, split_url
from producer.tags import sidecars
from producer.tags.keywords import (
    SIDECAR_MAX_BYTES,
    KeywordPath,
    SidecarChange,
    TagOptions,
    keyword_changes,
    shown,
    wanted_keywords,
)
from producer.tags.sidecars import ADDED, HIERARCHICAL, SUBJECT, TAGS_LIST, SidecarError

StoreError = (ImageError, SourceUnavailable, ListingError)
SIDECAR_CONTENT_TYPE = "application/rdf+xml"


def sidecar_url(image: str, naming: str) -> str:
    """``s3://b/a/IMG_1.jpg.xmp`` (full) or ``s3://b/a/IMG_1.xmp`` (stem) for the image ``s3://b/a/IMG_1.jpg``."""
    bucket, key = split_url(image)
    base = key if naming == "full" else posixpath.splitext(key)[0]
    return f"s3://{bucket}/{base}.xmp"


def changed_object(sidecar: str, record: ResultRecord, submitted_at: float | None) -> SidecarChange | None:
    """A skip when the object at the record's URL is gone, cannot be looked at, or was written after its job
    was submitted (one HEAD; its last-modified time has whole seconds); None when it may be tagged."""
    bucket, key = split_url(record.path)
    try:
        head = request(lambda c: c.head_object(Bucket=bucket, Key=key))
    except StoreError as exc:
        missing = isinstance(exc, ImageError) and exc.code == "missing"
        why = "no image there any more" if missing else f"cannot look at it: {_message(exc)}"
        return SidecarChange(sidecar, "missing-image", message=f"{record.path}: {why}; its sidecar was left alone")
    modified = head.get("LastModified")
    if submitted_at is None or modified is None or modified.timestamp() <= submitted_at:
        return None
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(modified.timestamp()))
    return SidecarChange(sidecar, "skipped", message=f"{record.path} changed at {when}, after job {record.job} "
                                                      "was submitted: not tagged (classify it again to tag it)")


def tag_object(url: str, paths: list[KeywordPath], options: TagOptions) -> SidecarChange:
    """Make imgq's keywords in the sidecar object ``url`` exactly those of ``paths`` (none: remove them): created,
    changed, deleted (one imgq created, emptied), unchanged, or failed (a message; the object left as it was)."""
    try:
        data = read_sidecar(url)
    except StoreError as exc:
        return SidecarChange(url, "failed", message=f"cannot read {url}: {_message(exc)}; left as it is")
    try:
        if data is None:
            return _create(url, paths, options)
        packet = sidecars.parse(data)
        remove, add = keyword_changes(packet, paths, options)
        if not any(remove.get(f) or add.get(f) for f in (SUBJECT, HIERARCHICAL, TAGS_LIST)):
            return SidecarChange(url, "unchanged")
        removed = tuple(sorted(remove[SUBJECT] or remove[HIERARCHICAL]))
        edited = sidecars.edit(packet, remove, add)
        if edited == sidecars.NEW_SIDECAR:  # one imgq created, now holding nothing: it goes, as it came
            if not options.dry_run:
                _delete(url)
            return SidecarChange(url, "deleted", removed=removed)
        if not options.dry_run:
            write_sidecar(url, edited)
        return SidecarChange(url, "changed", added=shown(add), removed=removed)
    except SidecarError as exc:
        return SidecarChange(url, "failed", message=f"cannot edit {url}: {exc}")
    except StoreError as exc:
        return SidecarChange(url, "failed", message=f"cannot write {url}: {_message(exc)}")


def _create(url: str, paths: list[KeywordPath], options: TagOptions) -> SidecarChange:
    if not paths:
        return SidecarChange(url, "unchanged")
    add = wanted_keywords(paths, options.prefix, options.groups)
    add[ADDED] = list(add[SUBJECT])
    if not options.dry_run:
        write_sidecar(url, sidecars.new_sidecar(add))
    return SidecarChange(url, "created", added=shown(add))


def read_sidecar(url: str) -> bytes | None:
    """The sidecar object's bytes (one GET, at most SIDECAR_MAX_BYTES: refused on its announced size first);
    None when there is none. Raises ImageError (too large, empty, refused) or SourceUnavailable."""
    try:
        with S3Objects().open(url, (), SIDECAR_MAX_BYTES) as file:
            return file.read()
    except ImageError as exc:
        if exc.code == "missing":
            return None
        raise


def write_sidecar(url: str, data: bytes) -> None:
    """One PutObject of ``data`` at ``url``. Raises ImageError or SourceUnavailable."""
    bucket, key = split_url(url)
    request(lambda c: c.put_object(Bucket=bucket, Key=key, Body=data, ContentType=SIDECAR_CONTENT_TYPE))


def _delete(url: str) -> None:
    bucket, key = split_url(url)
    request(lambda c: c.delete_object(Bucket=bucket, Key=key))


def _message(exc: Exception) -> str:
    return exc.message if isinstance(exc, ImageError) else str(exc)
