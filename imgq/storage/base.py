"""Where image bytes come from: the contract every byte source meets (local files, s3:// object storage).

The worker opens an image, the walk lists a folder and a scheduled scan tells a changed file from an
unchanged one only through ``ByteSource``; which source serves a location is decided in one place
(imgq/storage/locate.py), never by an ``if`` on a URL scheme in the batch path. ``tests/test_byte_sources.py``
runs one contract test class against every implementation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from imgq.storage.selection import PathFilter, Skipped


class ByteSource(ABC):
    """One kind of place images are read from. Locations are strings: a path, or a URL of the source's scheme."""

    @abstractmethod
    def owns(self, location: str) -> bool:
        """True when this source serves ``location``."""

    @abstractmethod
    def absolute(self, location: str) -> str:
        """``location`` as records carry it and the walk compares it: a local path made absolute and
        normalised (symlinks kept, as the user named them); a URL as it is."""

    @abstractmethod
    def open(self, location: str, allowed_roots: tuple[str, ...] = (),
             max_bytes: int | None = None) -> AbstractContextManager[BinaryIO]:
        """``location`` opened for reading, as a context manager, once it is known to be allowed, readable,
        a single object (a regular file), not empty and at most ``max_bytes`` long.

        Bounds: what a refusal costs is bounded by metadata, never by the content: the size is known before a
        byte of the body is read, and the open never blocks (a FIFO, a device). The roots are checked before
        anything is asked about the location, so nothing is told about what lies outside them, not even
        whether it exists; and again on what was opened, so that what is read is what was checked.

        Raises ImageError with code ``forbidden`` (outside ``allowed_roots``, or refused by the store),
        ``missing``, ``unreadable``, ``not_an_image`` (empty) or ``too_large``; the message never says where a link
        outside the roots led. A remote store that does not answer (after its client's retries) raises
        SourceUnavailable instead: no record is made, the batch is tried again.
        """

    @abstractmethod
    def version(self, location: str) -> bytes | None:
        """A short fingerprint of the content's version, read from metadata alone (a file's size and
        modification time): equal while the content is unchanged, different once it changes. None when the
        location cannot be read. Scheduled scans submit a location again only when its version changed."""

    @abstractmethod
    def list(self, location: str, path_filter: PathFilter, skipped: Skipped | None = None) -> Iterator[str]:
        """The images under ``location``, each once, in a stable order, streamed (memory bounded by one folder's
        entries, never the tree's; the walk relies on "each once" to hold nothing per image of the last location
        it lists): a single image is yielded as it is (the worker reports it if it is none); a folder's images
        are chosen by ``path_filter``, hidden entries and folders with an ignore marker left out, and the others
        counted in ``skipped``. A folder that cannot be read yields nothing; a store that cannot be listed at all
        (no such bucket, refused credentials, no answer) raises ListingError, so that
        a mistake is told rather than taken for an empty folder."""

    @abstractmethod
    def folders(self, location: str) -> Sequence[str]:
        """The folders directly in ``location`` (a local folder's sub-folders, never through a symbolic link; an
        s3:// prefix's sub-prefixes), as locations (no trailing '/'), sorted by name, hidden ones ('.' first) left
        out: `imgq learn` takes each as a label. Empty when there are none; raises ListingError when ``location``
        cannot be listed at all (one line)."""

    def list_versions(self, location: str, path_filter: PathFilter,
                      skipped: Skipped | None = None) -> Iterator[tuple[str, bytes | None]]:
        """``list``'s images, in the same order, each with its ``version`` as it was when it was listed: equal to
        what ``version`` says of it at that time (a scheduled scan compares it with the last one it saw). This
        default asks ``version`` once per image (a stat for a local file); a source whose listing already
        carries each entry's metadata (an S3 LIST: ETag, size, last-modified) overrides it to take the version
        from the listing, with no request per image. Raises as ``list`` does."""
        for found in self.list(location, path_filter, skipped):
            yield found, self.version(found)
