"""Local files (and anything mounted as them): the byte source of every location no other source claims.

Opened as imgq opens every file on a user's behalf (imgq/storage/files.py): never blocking, regular files
only, the size checked before a byte is read; the allowed roots checked on the path and again on the
opened descriptor. Folders are listed lazily, one folder's entries at a time, never through a symlinked folder
(a loop would never end, and a link could lead out of what the user named), each folder's entries in sorted
order, so that image ids (numbered in walk order) are the same on every file system (ext4, tmpfs and NFS list
a folder in different orders).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO

from imgq.storage.base import ByteSource
from imgq.storage.errors import ImageError, ListingError, one_line
from imgq.storage.files import open_nonblocking
from imgq.storage.roots import within_roots
from imgq.storage.selection import IGNORE_MARKERS, PathFilter, Skipped, is_sidecar, sidecar_owners

STAT_DIGEST_BYTES = 8


def stat_digest(size: int, mtime_ns: int) -> bytes:
    """8 bytes standing for a file version: its size and modification time in nanoseconds."""
    return hashlib.blake2b(struct.pack("<Qq", size, mtime_ns), digest_size=STAT_DIGEST_BYTES).digest()


def check_allowed(path: str, allowed_roots: tuple[str, ...]) -> str:
    """The real path of ``path`` (symlinks resolved); raises ImageError('forbidden') outside the roots.

    The message says no more than that: never where the path's symlinks lead (that is what the roots keep
    private); the record carries the path as it was submitted.
    """
    real = os.path.realpath(path)
    if not within_roots(real, allowed_roots):
        raise ImageError("forbidden", "outside the allowed roots")
    return real


def opened_path(fd: int) -> str:
    """The path of the file open as ``fd``, as the kernel knows it: where the open really led.

    Linux tells it in /proc/self/fd. Elsewhere (or without /proc) the answer is the empty string, which
    no root contains: a worker with allowed roots refuses what it cannot verify.
    """
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class LocalFiles(ByteSource):
    """Paths on this machine's file systems (see ByteSource for the contract)."""

    def owns(self, location: str) -> bool:
        return True  # the fallback: every location no other source claims is a path

    def absolute(self, location: str) -> str:
        return os.path.abspath(location)

    @contextmanager
    def open(self, location: str, allowed_roots: tuple[str, ...] = (),
             max_bytes: int | None = None) -> Iterator[BinaryIO]:
        """The roots are checked twice: on the path, so that nothing is told about files outside them (not
        even whether they exist), and on the opened descriptor, so that the file read is the file checked: a
        symlink swapped in between the check and the open is caught there."""
        real = check_allowed(location, allowed_roots)
        try:
            file = open(real, "rb", opener=open_nonblocking)  # noqa: SIM115 (closed by the with below)
        except FileNotFoundError:
            raise ImageError("missing", "no such file") from None
        except IsADirectoryError:
            raise ImageError("unreadable", "is a directory, not a file") from None
        except PermissionError:
            raise ImageError("unreadable", "permission denied") from None
        except OSError as exc:
            reason = "symlink loop" if exc.errno == errno.ELOOP else one_line(exc)
            raise ImageError("unreadable", reason) from None
        with file:
            if allowed_roots and not within_roots(opened_path(file.fileno()), allowed_roots):
                raise ImageError("forbidden", "outside the allowed roots")
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ImageError("unreadable", "not a regular file (a pipe, socket or device)")
            if info.st_size == 0:
                raise ImageError("not_an_image", "empty file (0 bytes)")
            if max_bytes is not None and info.st_size > max_bytes:
                raise ImageError("too_large", f"{info.st_size} bytes is more than {max_bytes} (IMGQ_MAX_FILE_BYTES)")
            yield file

    def version(self, location: str) -> bytes | None:
        """``stat_digest`` of the file as it is now: its size and modification time in nanoseconds."""
        try:
            info = os.stat(location)
        except OSError:
            return None
        return stat_digest(info.st_size, info.st_mtime_ns)

    def folders(self, location: str) -> Sequence[str]:
        try:
            with os.scandir(location) as entries:
                found = [e.path for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
        except OSError as exc:
            raise ListingError(f"Cannot read {location}: {exc.strerror or exc}.") from None
        return sorted(found, key=os.path.basename)

    def list(self, location: str, path_filter: PathFilter, skipped: Skipped | None = None) -> Iterator[str]:
        if os.path.isdir(location):
            yield from _walk(location, path_filter, skipped)
        else:
            yield location  # a named file is taken as it is; the worker reports it if it is not an image


def _walk(folder: str, path_filter: PathFilter, skipped: Skipped | None) -> Iterator[str]:
    try:
        entries = os.scandir(folder)
    except OSError:
        return  # unreadable sub-folder: nothing to take from it
    subfolders, files, others, links = [], [], [], []
    with entries:
        for entry in entries:
            if entry.name in IGNORE_MARKERS:
                return  # the folder asks to be left alone, files found before the marker included
            if entry.name.startswith(".") or path_filter.excluded(entry.path, entry.name):
                continue
            if entry.is_dir(follow_symlinks=False):
                if path_filter.recursive:
                    subfolders.append(entry.path)
            elif entry.is_symlink() and entry.is_dir():  # a folder, never followed: neither a file nor an image
                if path_filter.recursive:
                    links.append(entry.path)
            elif path_filter.wants(entry.name):
                files.append(entry.path)
            elif skipped is not None:
                others.append((entry.path, entry.name))
    # Files are held until the folder is read whole, since a marker may come last, and to sort them: one
    # folder's file names, never the tree's. Sorted by path, which within one folder is by name.
    files.sort()
    subfolders.sort()
    if skipped is not None:
        owners = sidecar_owners(os.path.basename(path) for path in files)
        for path, name in sorted(others):
            if not is_sidecar(name, owners):  # an image's sidecar (imgq tag's) is its file, not one left out
                skipped.add(path, name)
        for path in sorted(links):
            skipped.add_folder_link(path)
    yield from files
    for sub in subfolders:
        yield from _walk(sub, path_filter, skipped)


