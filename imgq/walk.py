"""Walk paths lazily and choose the images in them: what `imgq submit`, `imgq classify` and a schedule's tick
take from the paths they are given.

The walk never holds a folder in memory and never follows a symlinked folder (a loop would never end, and a
link could lead out of what the user named). It chooses files by name; the worker decides by content.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from imgq.contract import IMAGE_EXTENSIONS, path_digest

IGNORE_MARKERS = (".nomedia", ".imgqignore")
# A folder holding one of these files is skipped with everything below it: Android's .nomedia (which photo
# tools such as Nextcloud Recognize honour too), and imgq's own.


@dataclass(frozen=True)
class PathFilter:
    """Which files and folders the walk takes from the folders given.

    - ``recursive``: walk into sub-folders.
    - ``includes``: globs of file names to take instead of the image extensions.
    - ``excludes``: globs matched against a file's or folder's name and against its whole path (so that
      ``*/thumbnails/*``, ``thumbnails`` and ``*.tmp.jpg`` all work); what matches is skipped, a folder with
      everything below it.

    Explicitly named files are always taken; the filter chooses among files found in folders.
    """

    recursive: bool = True
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()

    def wants(self, name: str) -> bool:
        if self.includes:
            return any(fnmatch.fnmatch(name, pattern) for pattern in self.includes)
        return name.rpartition(".")[2].lower() in IMAGE_EXTENSIONS

    def excluded(self, path: str, name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(path, pattern) for pattern in self.excludes)


def iter_images(paths: Iterable[str], path_filter: PathFilter) -> Iterator[str]:
    """Absolute, normalised image paths under ``paths``, each once, without holding a folder in memory.

    Hidden files and folders (name starting with "."), excluded ones and folders holding an IGNORE_MARKERS
    file are skipped inside folders. Duplicates are dropped by the path's digest, ~70 bytes of memory per image.
    """
    seen: set[bytes] = set()
    for path in paths:
        for found in _expand(os.path.abspath(path), path_filter):
            digest = path_digest(found)
            if digest not in seen:
                seen.add(digest)
                yield found


def _expand(path: str, path_filter: PathFilter) -> Iterator[str]:
    if os.path.isdir(path):
        yield from _walk(path, path_filter)
    else:
        yield path  # a named file is taken as it is; the worker reports it if it is not an image


def _walk(folder: str, path_filter: PathFilter) -> Iterator[str]:
    try:
        entries = os.scandir(folder)
    except OSError:
        return  # unreadable sub-folder: nothing to take from it
    subfolders, files = [], []
    with entries:
        for entry in entries:
            if entry.name in IGNORE_MARKERS:
                return  # the folder asks to be left alone, files found before the marker included
            if entry.name.startswith(".") or path_filter.excluded(entry.path, entry.name):
                continue
            if entry.is_dir(follow_symlinks=False):
                if path_filter.recursive:
                    subfolders.append(entry.path)
            elif path_filter.wants(entry.name):
                files.append(entry.path)
    # Files are held until the folder is read whole, since a marker may come last: one folder's file names,
    # never the tree's.
    yield from files
    for sub in subfolders:
        yield from _walk(sub, path_filter)


def read_path_list(lines: Iterable[str]) -> Iterator[str]:
    """Paths from a list file, one per line; blank lines and lines starting with # are skipped."""
    for line in lines:
        line = line.rstrip("\n")
        if line.strip() and not line.lstrip().startswith("#"):
            yield line
