"""Where imgq writes files that others read back: the contract of every destination (a local folder, an s3://
prefix), the writing side beside ByteSource's reading side (imgq/storage/base.py).

The workers write activation dumps and embedding files under IMGQ_DUMP_ROOT and Parquet sink files under
IMGQ_SINK_DIR; the producer reads them back (`imgq results --embeddings`, `imgq show`, `imgq report`, `imgq
duplicates`, `imgq results` of a sink job). Both sides go through ``Destination``, chosen by
``destination_for`` (imgq/storage/locate.py): nothing downstream branches on a URL scheme. Locations are strings,
a path or a URL, and a file's location under a root is made with ``os.path.join`` alike for both (on POSIX,
``s3://bucket/prefix`` joined with ``job/3.npz`` is the key ``prefix/job/3.npz``): the layout of keys is the layout
of paths. ``tests/test_destinations.py`` runs one contract test class against every implementation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import BinaryIO

from imgq.storage.files import WriteError

PROBE_NAME = ".imgq-write-check"
# What a start check writes under a root and removes (hidden: no reader's pattern takes it for a file of imgq's).


class StoreError(OSError):
    """A destination's store did not serve a read, a listing or a removal (refused access, no answer after its
    client's retries). An OSError, as a local file system's failures are, so that every reader handles both
    alike; its str() is one line naming the location and the reason, never the credentials."""

    def __str__(self) -> str:
        return self.args[0]


class Destination(ABC):
    """One kind of place imgq writes files that others read (see the module docstring)."""

    @abstractmethod
    def owns(self, location: str) -> bool:
        """True when this destination serves ``location``."""

    @abstractmethod
    def writing(self, location: str, *, durable: bool = False) -> AbstractContextManager[BinaryIO]:
        """A binary file to write the content of ``location`` into, as a context manager. When the block ends
        without an exception, the content appears under ``location`` whole, replacing what was there; when it
        raises, nothing changes under ``location``: a reader never sees half a file, a writer killed mid-write
        leaves nothing under the name. Folders are made as needed. ``durable``: the content is on stable storage
        when the block returns (a local file is fsynced; an object store's acknowledged PUT always is).

        Raises WriteError (an OSError, one line naming the location) when the content cannot be written: a
        folder that cannot be made, a full disk, a missing bucket, refused credentials, a store that does not
        answer after its client's retries. What the block raises passes as it is."""

    @abstractmethod
    def open(self, location: str, max_bytes: int) -> AbstractContextManager[BinaryIO]:
        """``location`` opened for reading, as a context manager, once it is known to be a single regular file
        (or object) of at most ``max_bytes`` bytes: a link is not followed, a pipe never blocks the open, the
        size is known before a byte is read.

        Raises FileNotFoundError when nothing is there, RefusedFile (a ValueError: a link, not a regular file,
        over ``max_bytes``) and OSError (permissions; StoreError for a store that refused or did not answer)."""

    @abstractmethod
    def exists(self, location: str) -> bool:
        """True when a file (an object) is at ``location``; False when nothing is, or it cannot be told."""

    @abstractmethod
    def names(self, folder: str) -> list[str]:
        """The names of the files directly in ``folder``, sorted, never a file deeper down (a local folder's
        sub-folders are listed by their names too: one under a file's name is then an error where the file is
        opened or removed; a prefix's sub-prefixes are not); [] when the folder does not exist (or, for a prefix,
        nothing is under it). Raises OSError when it cannot be listed (StoreError for a store)."""

    @abstractmethod
    def listing(self, folder: str) -> list[tuple[str, str]]:
        """``names(folder)``, each with its version: a string that changes whenever the file is written again,
        and that ``version`` gives for the file ``open`` reads (a local file: its size, modification time in
        nanoseconds and inode, "" for what is not a regular file; an object: its size and ETag, from the LIST
        pages ``names`` fetches anyway: no request per file). Raises as ``names``."""

    @abstractmethod
    def version(self, file: BinaryIO) -> str:
        """The version of the content a file ``open`` gave holds, as ``listing`` names it: a file written again
        after it was listed reads with another one."""

    @abstractmethod
    def remove(self, location: str) -> None:
        """Remove the file at ``location``; nothing when it is not there. Raises OSError when it cannot be removed."""

    @abstractmethod
    def remove_folder(self, folder: str) -> None:
        """Remove ``folder`` if nothing is left in it (a prefix has no existence of its own: nothing to do).
        Never raises: a folder that cannot be removed is left as it is."""

    @abstractmethod
    def check_writable(self, root: str) -> None:
        """Write a small file under ``root`` (``PROBE_NAME``) and remove it: the check a worker makes before it
        says it is ready, so that a destination that cannot be written (a read-only folder, a missing bucket,
        refused credentials, a store away) is one line at its start, not a lost dump later. Makes ``root``'s
        folders as needed. Raises WriteError saying why, in one line."""

    def size(self, file: BinaryIO) -> int:
        """Bytes written so far into a file ``writing`` gave (its position: writers only append)."""
        return file.tell()


def write_refused(location: str, reason: str) -> OSError:
    """The WriteError of ``location`` with ``reason`` (its strerror, as an OSError's), for a store that has no
    OSError of its own to say it (imgq/storage/files.py's ``cannot_write`` makes it from one)."""
    error = WriteError(f"Cannot write {location}: {reason}.")
    error.strerror, error.filename = reason, location
    return error


def write_all(destination: Destination, location: str, data: bytes) -> None:
    """``data`` written as the content of ``location`` (see ``Destination.writing``)."""
    with destination.writing(location) as file:
        file.write(data)


def read_all(destination: Destination, location: str, max_bytes: int) -> bytes:
    """The content of ``location`` (see ``Destination.open`` for what it raises)."""
    with destination.open(location, max_bytes) as file:
        return file.read()

