"""Writes that others read: a file appears whole under its name, or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path beside ``path``, renamed to ``path`` when the block succeeds and removed when it
    fails: a reader never sees half a file, and a failed write leaves an older file as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".imgq-", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, usual_mode(0o666))  # mkstemp makes it private (0600); the file is meant to be shared
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def usual_mode(mode: int) -> int:
    """``mode`` less the process's umask: what open() or mkdir() would have given a new file or folder."""
    umask = os.umask(0o22)  # reading the umask means setting it; put back at once
    os.umask(umask)
    return mode & ~umask
