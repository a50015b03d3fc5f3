"""Allowed roots: the folders a worker may read images from (IMGQ_ALLOWED_ROOTS), as paths are compared."""

from __future__ import annotations

import os
from collections.abc import Iterable


def is_within(path: str, root: str) -> bool:
    """True when the real path ``path`` is ``root`` or below it (``root`` real too)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def within_roots(path: str, roots: Iterable[str]) -> bool:
    """True when the real path of ``path`` is under one of ``roots`` (whose real paths are taken too: a root
    given through a symlink, relative, or with ".." must still contain its files). No roots: no restriction."""
    roots = tuple(roots)
    real = os.path.realpath(path)
    return not roots or any(is_within(real, os.path.realpath(root)) for root in roots)


def outside_roots(paths: Iterable[str], roots: Iterable[str]) -> str | None:
    """The first of ``paths`` that is outside ``roots`` (as given, never where a symlink points); None if none."""
    roots = tuple(roots)
    return next((path for path in paths if not within_roots(path, roots)), None)
