"""Walk paths lazily and choose the images in them: what `imgq submit`, `imgq classify` and a schedule's tick
take from the paths they are given.

Each path is listed by the byte source that serves it (imgq/storage/locate.py; for local files,
imgq/storage/local.py: never a symlinked folder, each folder's entries in sorted order, so that image ids,
numbered in walk order, are the same on every file system). The walk chooses files by name (the worker decides
by content, imgq/storage/selection.py) and drops a path seen twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from imgq.contract import path_digest
from imgq.storage.locate import source_for
from imgq.storage.selection import PathFilter, Skipped


def iter_images(paths: Iterable[str], path_filter: PathFilter, skipped: Skipped | None = None) -> Iterator[str]:
    """Absolute, normalised image paths under ``paths``, each once, without holding the tree in memory.

    Hidden files and folders (name starting with "."), excluded ones and folders holding an IGNORE_MARKERS
    file are skipped inside folders. A path found under two of ``paths`` is taken once: the images of every
    location but the last are remembered by their path's digest (~90 bytes each); the last one's are not, since a
    source lists each path once (ByteSource.list), so that one folder or prefix (`imgq submit s3://bucket/photos`)
    is walked in memory that does not grow with its images.
    A folder's entries are taken in sorted order (by name), files first, then sub-folders; an s3:// prefix's in
    key order (imgq/storage/s3_listing.py). ``skipped``, when
    given, counts the files of the folders walked that the filter does not want (complete once the walk is).
    """
    for found, _ in _walk(paths, path_filter, skipped, versions=False):
        yield found


def iter_image_versions(paths: Iterable[str], path_filter: PathFilter,
                        skipped: Skipped | None = None) -> Iterator[tuple[str, bytes | None]]:
    """``iter_images``'s paths, in the same order, each with its version (ByteSource.list_versions: a stat per
    local file, nothing more than the LIST pages for s3:// objects); None for one that vanished meanwhile."""
    return _walk(paths, path_filter, skipped, versions=True)


def _walk(paths: Iterable[str], path_filter: PathFilter, skipped: Skipped | None,
          versions: bool) -> Iterator[tuple[str, bytes | None]]:
    if skipped is not None:
        skipped.includes = bool(path_filter.includes)
    seen: set[bytes] = set()  # the digests of the images of the locations before the one being listed
    for path, last in _marking_last(paths):
        for found, version in _listed(path, path_filter, skipped, versions):
            if seen or not last:
                digest = path_digest(found)
                if digest in seen:
                    continue
                if not last:
                    seen.add(digest)
            yield found, version


def _marking_last(items: Iterable[str]) -> Iterator[tuple[str, bool]]:
    """``(item, is_last)`` for each of ``items``, reading one item ahead (a list file's next line)."""
    iterator = iter(items)
    previous = next(iterator, None)
    while previous is not None:
        following = next(iterator, None)
        yield previous, following is None
        previous = following


def _listed(path: str, path_filter: PathFilter, skipped: Skipped | None,
            versions: bool) -> Iterator[tuple[str, bytes | None]]:
    source = source_for(path)
    if versions:
        return source.list_versions(source.absolute(path), path_filter, skipped)
    return ((found, None) for found in source.list(source.absolute(path), path_filter, skipped))


def read_path_list(lines: Iterable[str]) -> Iterator[str]:
    """Paths from a list file, one per line; blank lines and lines starting with # are skipped."""
    for line in lines:
        line = line.rstrip("\n")
        if line.strip() and not line.lstrip().startswith("#"):
            yield line
