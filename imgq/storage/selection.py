"""What the walk takes from a folder: image files by name (``PathFilter``), and a count of what it left out
(``Skipped``), so that a user learns the videos and notes of a phone's folder were not queued."""

from __future__ import annotations

import fnmatch
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from imgq.contract import IMAGE_EXTENSIONS

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


SIDECAR_EXTENSION = ".xmp"


def sidecar_owners(images: Iterable[str]) -> frozenset[str]:
    """The stems an XMP sidecar of one of ``images`` (file names the walk takes from one folder) has: each name
    (IMG_1.jpg, for IMG_1.jpg.xmp) and each name without its extension (IMG_1, for IMG_1.xmp)."""
    names = list(images)
    return frozenset(names) | frozenset(os.path.splitext(name)[0] for name in names)


def is_sidecar(name: str, owners: frozenset[str]) -> bool:
    """``name`` is the XMP sidecar of an image beside it (``owners``: sidecar_owners of the folder's images), as
    `imgq tag` writes them (--sidecar-name full or stem), and darktable, digiKam or Lightroom: the image's file,
    not a file the walk left out. An .xmp beside no image taken is not one."""
    stem, extension = os.path.splitext(name)
    return extension.lower() == SIDECAR_EXTENSION and stem in owners


NO_EXTENSION = "(no extension)"
SHOWN_KINDS = 6  # kinds of file a summary names; the rest are counted as "N more kinds"


@dataclass
class Skipped:
    """The files a walk found in folders and did not take because the filter does not want them (not an image
    extension, or no ``--include`` matches): counted by extension as written (``.MOV``), and listed when
    ``keep_paths`` (``--verbose``; a listing holds one path per skipped file, the counts a few bytes per kind).

    Hidden files, excluded ones, folders with an ignore marker and the XMP sidecars of the images taken
    (``is_sidecar``: imgq tag's own) are left out on purpose and not counted. Symbolic links to folders, which
    the walk never follows, are counted apart (``folder_links``, their paths in ``link_paths`` when kept): they
    are not files.
    """

    keep_paths: bool = False
    by_kind: Counter[str] = field(default_factory=Counter)
    paths: list[str] = field(default_factory=list)
    includes: bool = False  # the filter chose by --include globs: "not images" would be the wrong reason
    folder_links: int = 0
    link_paths: list[str] = field(default_factory=list)

    def add(self, path: str, name: str) -> None:
        stem, dot, extension = name.rpartition(".")
        self.by_kind[f".{extension}" if dot and stem else NO_EXTENSION] += 1
        if self.keep_paths:
            self.paths.append(path)

    def add_folder_link(self, path: str) -> None:
        """A symbolic link to a folder, found where the walk went into folders, and not followed."""
        self.folder_links += 1
        if self.keep_paths:
            self.link_paths.append(path)

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
        """``skipped 2 files that are not images (1 .MOV, 1 .txt); 1 symlinked folder, not followed``, either part
        alone; the empty string when nothing was skipped."""
        links = f"{self.folder_links} symlinked folder{'s' if self.folder_links != 1 else ''}, not followed"
        parts = (skipped_phrase(self.total, self.kinds(), self.includes), links if self.folder_links else "")
        return "; ".join(part for part in parts if part)

    def to_fields(self) -> dict[str, str | int]:
        """The job hash's fields (imgq.results.store.ResultStore.commit_job): ``skipped_files``, ``skipped_kinds``
        (files only: a symlinked folder is not one)."""
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
