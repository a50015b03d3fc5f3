"""Walk paths lazily and choose the images in them: what `imgq submit`, `imgq classify` and a schedule's tick
take from the paths they are given.

The walk never holds the tree in memory and never follows a symlinked folder (a loop would never end, and a
link could lead out of what the user named). It chooses files by name; the worker decides by content. It
reads each folder's entries in sorted order, so that image ids (numbered in walk order) are the same on every
file system (ext4, tmpfs and NFS list a folder in different orders), and it counts what it leaves out for not
being an image (``Skipped``), so that a user learns the videos and notes of a phone's folder were not queued.
"""

from __future__ import annotations

import fnmatch
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

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


NO_EXTENSION = "(no extension)"
SHOWN_KINDS = 6  # kinds of file a summary names; the rest are counted as "N more kinds"


@dataclass
class Skipped:
    """The files a walk found in folders and did not take because the filter does not want them (not an image
    extension, or no ``--include`` matches): counted by extension as written (``.MOV``), and listed when
    ``keep_paths`` (``--verbose``; a listing holds one path per skipped file, the counts a few bytes per kind).

    Hidden files, excluded ones and folders with an ignore marker are left out on purpose and not counted.
    """

    keep_paths: bool = False
    by_kind: Counter[str] = field(default_factory=Counter)
    paths: list[str] = field(default_factory=list)
    includes: bool = False  # the filter chose by --include globs: "not images" would be the wrong reason

    def add(self, path: str, name: str) -> None:
        stem, dot, extension = name.rpartition(".")
        self.by_kind[f".{extension}" if dot and stem else NO_EXTENSION] += 1
        if self.keep_paths:
            self.paths.append(path)

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def kinds(self) -> str:
        """``1 .MOV, 1 .txt``: the most frequent kinds first, at most SHOWN_KINDS of them."""
        ranked = sorted(self.by_kind.items(), key=lambda item: (-item[1], item[0]))
        shown = [f"{count} {kind}" for kind, count in ranked[:SHOWN_KINDS]]
        if len(ranked) > SHOWN_KINDS:
            shown.append(f"{len(ranked) - SHOWN_KINDS} more kinds")
        return ", ".join(shown)

    def summary(self) -> str:
        """``skipped 2 files that are not images (1 .MOV, 1 .txt)``; the empty string when nothing was skipped."""
        return skipped_phrase(self.total, self.kinds(), self.includes)

    def to_fields(self) -> dict[str, str | int]:
        """The job hash's fields (imgq.store.ResultStore.commit_job): ``skipped_files``, ``skipped_kinds``."""
        return {"skipped_files": self.total, "skipped_kinds": self.kinds()} if self.total else {}


def skipped_phrase(count: int, kinds: str, by_include: bool = False) -> str:
    """``skipped 2 files that are not images (1 .MOV, 1 .txt)``, or ``... that match no --include (...)``;
    the empty string for 0 files. Also used on the counts a job or a schedule's run keeps."""
    if not count:
        return ""
    if by_include:
        reason = "file that matches no --include" if count == 1 else "files that match no --include"
    else:
        reason = "file that is not an image" if count == 1 else "files that are not images"
    return f"skipped {count} {reason} ({kinds})"


def iter_images(paths: Iterable[str], path_filter: PathFilter, skipped: Skipped | None = None) -> Iterator[str]:
    """Absolute, normalised image paths under ``paths``, each once, without holding the tree in memory.

    Hidden files and folders (name starting with "."), excluded ones and folders holding an IGNORE_MARKERS
    file are skipped inside folders. Duplicates are dropped by the path's digest, ~70 bytes of memory per image.
    A folder's entries are taken in sorted order (by name), files first, then sub-folders. ``skipped``, when
    given, counts the files of the folders walked that the filter does not want (complete once the walk is).
    """
    if skipped is not None:
        skipped.includes = bool(path_filter.includes)
    seen: set[bytes] = set()
    for path in paths:
        for found in _expand(os.path.abspath(path), path_filter, skipped):
            digest = path_digest(found)
            if digest not in seen:
                seen.add(digest)
                yield found


def _expand(path: str, path_filter: PathFilter, skipped: Skipped | None) -> Iterator[str]:
    if os.path.isdir(path):
        yield from _walk(path, path_filter, skipped)
    else:
        yield path  # a named file is taken as it is; the worker reports it if it is not an image


def _walk(folder: str, path_filter: PathFilter, skipped: Skipped | None) -> Iterator[str]:
    try:
        entries = os.scandir(folder)
    except OSError:
        return  # unreadable sub-folder: nothing to take from it
    subfolders, files, others = [], [], []
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
            elif skipped is not None:
                others.append((entry.path, entry.name))
    # Files are held until the folder is read whole, since a marker may come last, and to sort them: one
    # folder's file names, never the tree's. Sorted by path, which within one folder is by name.
    files.sort()
    subfolders.sort()
    if skipped is not None:
        for path, name in sorted(others):
            skipped.add(path, name)
    yield from files
    for sub in subfolders:
        yield from _walk(sub, path_filter, skipped)


def read_path_list(lines: Iterable[str]) -> Iterator[str]:
    """Paths from a list file, one per line; blank lines and lines starting with # are skipped."""
    for line in lines:
        line = line.rstrip("\n")
        if line.strip() and not line.lstrip().startswith("#"):
            yield line
