"""A bound on how long Pillow may spend reading one file in pure Python.

Some of Pillow's plugins parse byte by byte in Python: the JPEG plugin skips junk after the start marker one
``read(1)`` at a time (a JPEG marker followed by 200 MB of 0xFF takes a minute to be refused), and GIF and
PNG walk their blocks and chunks in Python. The C decoders read in 64 KiB blocks. So Pillow reads through a
``BudgetedFile`` that refuses more than ``max_reads`` read calls: a file of any content is refused in time
proportional to that budget, and a real image, read in blocks, never comes near it.
"""

from __future__ import annotations

from typing import BinaryIO

MAX_READS = 1_000_000
# Read calls one decode may make. A 256 MB PNG written with libpng's 8 KiB IDAT chunks takes about 130 000;
# a million byte-by-byte reads of junk cost Pillow well under a second.


class ReadBudgetExceeded(OSError):
    """Pillow read a file more than ``max_reads`` times: junk that a plugin scans byte by byte."""


class BudgetedFile:
    """``file`` as Pillow uses it (read, seek, tell, fileno, ...), refusing more than ``max_reads`` reads."""

    def __init__(self, file: BinaryIO, max_reads: int = MAX_READS):
        self._file = file
        self.reads = 0
        self.bytes_read = 0
        self.max_reads = max_reads

    def read(self, size: int = -1) -> bytes:
        self._spend()
        data = self._file.read(size)
        self.bytes_read += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        self._spend()
        data = self._file.readline(size)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer) -> int:
        self._spend()
        count = self._file.readinto(buffer) or 0
        self.bytes_read += count
        return count

    def _spend(self) -> None:
        self.reads += 1
        if self.reads > self.max_reads:
            raise ReadBudgetExceeded(f"still no image after {self.max_reads} reads: junk in the file's structure")

    def __getattr__(self, name: str):
        return getattr(self._file, name)
