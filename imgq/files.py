"""Writes that others read: a file appears whole under its name, or not at all."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class WriteError(OSError):
    """A file cannot be written where it was asked to go (its folder is missing, not writable, or the
    name is a folder). An OSError, whose str() is one line naming the path and the reason."""

    def __str__(self) -> str:
        return self.args[0]


def cannot_write(path: str, exc: OSError) -> WriteError:
    """The WriteError saying why ``path`` could not be written, from the OSError that said so."""
    folder = os.path.dirname(os.path.abspath(path))
    reason = f"the folder {folder} does not exist" if not os.path.isdir(folder) else (exc.strerror or str(exc))
    error = WriteError(f"Cannot write {path}: {reason}.")
    error.errno, error.filename = exc.errno, path
    return error


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
