"""Allowed roots: where a worker may read images from (IMGQ_ALLOWED_ROOTS), as locations are compared.

A root is a local folder or an object-storage URL (``s3://bucket/prefix``). A path is only ever within a
folder root, a URL only within a URL root: a worker given only folders reads no bucket, and the reverse.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

URL_MARK = "://"


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
