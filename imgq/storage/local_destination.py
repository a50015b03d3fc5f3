"""Local folders (and anything mounted as them) as a destination: the one every location no other destination
claims is written to (see imgq/storage/destination.py for the contract).

A file is written under a temporary name in its folder and renamed over its name (imgq/storage/files.py's
``atomic_path``, as huey's FileStorage does): a reader sees it whole or not at all, a writer killed mid-write
leaves only a ``.imgq-*.tmp`` file, never a damaged file under the name. Read back as imgq reads every file on a
user's behalf: no link followed, regular files only, a size cap, never a blocking open.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from imgq.storage.destination import PROBE_NAME, Destination
from imgq.storage.files import atomic_path, cannot_write, open_regular


class LocalFolder(Destination):
    """Paths on this machine's file systems."""

    def owns(self, location: str) -> bool:
        return True  # the fallback: every location no other destination claims is a path

    @contextmanager
    def writing(self, location: str, *, durable: bool = False) -> Iterator[BinaryIO]:
        _make_folder(os.path.dirname(os.path.abspath(location)), location)
        with atomic_path(location) as tmp, open(tmp, "wb") as file:
            yield file
            if durable:  # before the rename: a crash just after must not leave an empty file under the name
                file.flush()
                os.fsync(file.fileno())

    @contextmanager
    def open(self, location: str, max_bytes: int) -> Iterator[BinaryIO]:
        file = open_regular(location, max_bytes)
        if file is None:
            raise FileNotFoundError(f"No such file: {location}")
        with file:
            yield file

    def exists(self, location: str) -> bool:
        return os.path.isfile(location)

    def names(self, folder: str) -> list[str]:
        """Every entry of ``folder``: a link is listed (and refused when it is opened), and so is a sub-folder, so
        that a folder standing under a file's name is an error where it is opened or removed, not a file that
        silently is not there."""
        try:
            return sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def listing(self, folder: str) -> list[tuple[str, str]]:
        """Each entry with the version of what lstat finds under it (a link: not followed, no version)."""
        found = []
        for name in self.names(folder):
            try:
                info = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:  # removed since the folder was read
                continue
            found.append((name, _version(info) if stat.S_ISREG(info.st_mode) else ""))
        return found

    def version(self, file: BinaryIO) -> str:
        return _version(os.fstat(file.fileno()))

    def remove(self, location: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(location)

    def remove_folder(self, folder: str) -> None:
        with contextlib.suppress(OSError):  # something else is in it: left as it is
            os.rmdir(folder)

    def check_writable(self, root: str) -> None:
        _make_folder(root, root)
        try:
            fd, probe = tempfile.mkstemp(dir=root, prefix=PROBE_NAME)
        except OSError as exc:
            raise cannot_write(os.path.join(root, PROBE_NAME), exc) from None
        os.close(fd)
        os.unlink(probe)


def _version(info: os.stat_result) -> str:
    """Size, modification time (ns) and inode: imgq writes a file under a temporary name and renames it, so a
    rewrite changes them."""
    return f"{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"


def _make_folder(folder: str, location: str) -> None:
    """``folder`` and its parents made as needed; WriteError naming ``location`` when they cannot be."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise cannot_write(location, exc) from None
