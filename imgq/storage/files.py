"""Files imgq opens on a user's behalf: reads that never block, never follow a link, take regular files only
and stop at a size cap; writes that others read, which appear whole under their name or not at all."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO


class WriteError(OSError):
    """A file cannot be written where it was asked to go (its folder is missing, not writable, or the
    name is a folder). An OSError, whose str() is one line naming the path and the reason."""

    def __str__(self) -> str:
        return self.args[0]


def cannot_write(path: str, exc: OSError) -> WriteError:
    """The WriteError saying why ``path`` could not be written, from the OSError that said so."""
    folder = os.path.dirname(os.path.abspath(path))
    if exc.errno == errno.ENOTDIR:  # before the test below: such a folder does not exist, and cannot be made
        reason = "a part of its path is a file, not a folder"
    elif not os.path.isdir(folder):
        reason = f"the folder {folder} does not exist"
    else:
        reason = exc.strerror or str(exc)
    error = WriteError(f"Cannot write {path}: {reason}.")
    # strerror is the reason alone, as an OSError's is: a caller that writes "cannot write X: <strerror>"
    # must not get "cannot write X: Cannot write X: ..." (str() is the whole line).
    error.errno, error.strerror, error.filename = exc.errno, reason, path
    return error


class RefusedFile(ValueError):
    """A file imgq will not read: a symbolic link (when links are not followed), not a regular file (a pipe,
    socket, device or folder), or larger than its cap. Its str() is the reason, one line."""


def open_nonblocking(path: str, flags: int) -> int:
    """``os.open`` that never waits: opening a named pipe (FIFO) for reading blocks until something writes
    to it, and O_NONBLOCK opens it at once (a regular file reads as usual). The ``opener`` of open()."""
    return os.open(path, flags | os.O_NONBLOCK)


def open_regular(path: str, max_bytes: int, *, follow_links: bool = False) -> BinaryIO | None:
    """``path`` opened for reading in binary once fstat shows a regular file of at most ``max_bytes`` bytes
    (the file read is the file checked); None when nothing is there. For readers that take a file object
    (Pillow, numpy, pyarrow) and read only the parts they need; the caller closes it.

    The last component of ``path`` is not followed when it is a symbolic link (O_NOFOLLOW), unless
    ``follow_links``: a link, even a dangling one, is refused, never read or resolved. The open never blocks
    (O_NONBLOCK).

    Raises RefusedFile (a link, not a regular file, over ``max_bytes``) and OSError (permissions, I/O).
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = open_nonblocking(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links and os.path.islink(path):
            raise RefusedFile("a symbolic link: imgq does not follow it") from None
        raise
    file = os.fdopen(fd, "rb")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RefusedFile("not a regular file (a folder, pipe, socket or device)")
        if info.st_size > max_bytes:
            raise RefusedFile(f"{info.st_size} bytes, more than the {max_bytes} bytes imgq reads")
    except BaseException:
        file.close()
        raise
    return file


def read_regular(path: str, max_bytes: int, *, follow_links: bool = False) -> tuple[bytes, os.stat_result] | None:
    """The bytes of the regular file at ``path`` and its fstat; None when nothing is there. Opened as
    ``open_regular`` opens it; at most ``max_bytes + 1`` bytes are ever read, whatever the file claims or
    grows to.

    Raises RefusedFile (a link, not a regular file, over ``max_bytes``) and OSError (permissions, I/O).
    """
    file = open_regular(path, max_bytes, follow_links=follow_links)
    if file is None:
        return None
    with file:
        info = os.fstat(file.fileno())
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew between the fstat and the read
        raise RefusedFile(f"more than the {max_bytes} bytes imgq reads")
    return data, info


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path beside ``path``, renamed to ``path`` when the block succeeds and removed when it
    fails: a reader never sees half a file, and a failed write leaves an older file as it was.

    Raises WriteError when the temporary file cannot be made or renamed (what the block raises passes as
    it is)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".imgq-", suffix=".tmp")
    except OSError as exc:
        raise cannot_write(path, exc) from None
    os.close(fd)
    os.chmod(tmp, usual_mode(0o666))  # mkstemp makes it private (0600); the file is meant to be shared
    try:
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise cannot_write(path, exc) from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def usual_mode(mode: int) -> int:
    """``mode`` less the process's umask (as read at import): what open() or mkdir() would have given a new
    file or folder."""
    return mode & ~UMASK


def _read_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status, 4.7+).

    Elsewhere reading it means setting it (os.umask) and putting it back; done once, at import, under a
    lock: done around every write, two threads interleaving their set/put-back pairs could leave the whole
    process at the placeholder value.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:
        umask = os.umask(0o077)  # the placeholder is the stricter one, should anything else read it meanwhile
        os.umask(umask)
    return umask


_umask_lock = threading.Lock()
UMASK = _read_umask()
# Read once: imgq never changes its umask, and a process that changes its own after importing imgq gets
# the modes of the umask it started with.
