"""Allowed roots: where a worker may read images from (IMGQ_ALLOWED_ROOTS), as locations are compared.

A root is a local folder or an object-storage URL (``s3://bucket/prefix``). A path is only ever within a
folder root, a URL only within a URL root: a worker given only folders reads no bucket, and the reverse.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

URL_MARK = "://"
_SCHEME = re.compile(r"[a-z][a-z0-9]*")  # what stands before :// in an entry


def parse_roots(raw: str, where: str) -> tuple[str, ...]:
    """The allowed roots of ``raw`` (IMGQ_ALLOWED_ROOTS, named ``where`` in messages): entries split on os.pathsep
    (':'), a URL's ``s3:`` joined back to its ``//bucket/prefix`` (``/photos:s3://b/x`` is two entries). A folder
    is resolved (~, symlinks, ..); an ``s3://bucket[/prefix]`` kept as written without a final '/'.

    Raises ValueError for another scheme, an s3 URL without a bucket, or with a '.', '..' or empty segment
    (which within_roots would never match: a root that holds nothing is a mistake to say, not to keep)."""
    entries: list[str] = []
    for part in raw.split(os.pathsep):
        if entries and part.startswith("//") and _SCHEME.fullmatch(entries[-1]):
            entries[-1] += os.pathsep + part
        elif part:
            entries.append(part)
    return tuple(_root(entry, where) for entry in entries)


def _root(entry: str, where: str) -> str:
    scheme, sep, rest = entry.partition(URL_MARK)
    if not sep:
        return str(Path(entry).expanduser().resolve())
    if scheme != "s3" or not rest.split("/", 1)[0]:
        raise ValueError(f"{where}: an entry is a folder or s3://bucket[/prefix]. Received: {entry!r}")
    if any(part in (".", "..") for part in rest.split("/")) or "//" in rest.rstrip("/"):
        raise ValueError(f"{where}: an s3:// entry has no '.', '..' or empty segment. Received: {entry!r}")
    return entry.rstrip("/")


def is_url(location: str) -> bool:
    """True for ``scheme://...`` (an object-storage location); False for a path, relative or absolute."""
    scheme, sep, _ = location.partition(URL_MARK)
    return bool(sep) and scheme.isalnum() and "/" not in scheme


def is_within(path: str, root: str) -> bool:
    """True when the real path ``path`` is ``root`` or below it (``root`` real too)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def url_within(url: str, root: str) -> bool:
    """True when ``url`` is the URL ``root`` or below it on a ``/`` boundary (``s3://b/photos`` holds
    ``s3://b/photos/x.jpg``, not ``s3://b/photos2/x.jpg``; ``s3://b`` holds the whole bucket).

    Object keys are literal strings, but an HTTP stack or a store may resolve ``.`` and ``..`` segments in a
    request's path, and ``//`` may be read as one ``/``: a URL with such a segment below its bucket is within no
    root, so that ``s3://b/photos/../secret.jpg`` is never read as if it were under ``s3://b/photos``.
    """
    _, _, rest = url.partition(URL_MARK)
    if any(part in ("", ".", "..") for part in rest.split("/")[1:-1]) or rest.endswith(("/.", "/..")):
        return False
    base = root.rstrip("/")
    return url == base or url.startswith(base + "/")


def within_roots(path: str, roots: Iterable[str]) -> bool:
    """True when ``path`` is under one of ``roots``; no roots: no restriction.

    A path's real path is compared with the folder roots' real paths (a root given through a symlink, relative,
    or with ".." must still contain its files); a URL with the URL roots, as written (``url_within``).
    """
    roots = tuple(roots)
    if not roots:
        return True
    if is_url(path):
        return any(url_within(path, root) for root in roots if is_url(root))
    real = os.path.realpath(path)
    return any(is_within(real, os.path.realpath(root)) for root in roots if not is_url(root))


def outside_roots(paths: Iterable[str], roots: Iterable[str]) -> str | None:
    """The first of ``paths`` that is outside ``roots`` (as given, never where a symlink points); None if none."""
    roots = tuple(roots)
    return next((path for path in paths if not within_roots(path, roots)), None)
