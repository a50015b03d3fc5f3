"""Which byte source serves a location, and which destination writes one: the one place that looks at a
location's form (a path or a URL).

A new source is one more entry in ``SOURCES``, a new destination one more in ``DESTINATIONS``; nothing downstream
branches on schemes.
"""

from __future__ import annotations

from imgq.storage.base import ByteSource
from imgq.storage.destination import Destination
from imgq.storage.local import LocalFiles
from imgq.storage.local_destination import LocalFolder
from imgq.storage.s3 import S3Objects
from imgq.storage.s3_destination import S3Prefix

SOURCES: tuple[ByteSource, ...] = (S3Objects(), LocalFiles())
# In the order they are asked; local files last, since they take every location the others leave.
DESTINATIONS: tuple[Destination, ...] = (S3Prefix(), LocalFolder())
# Likewise: local folders last.


def source_for(location: str) -> ByteSource:
    """The source that serves ``location``. Raises ValueError for a location no source serves."""
    for source in SOURCES:
        if source.owns(location):
            return source
    raise ValueError(f"Expected a path (no byte source serves URLs of this kind). Received: {location!r}")


def is_path(location: str) -> bool:
    """True when ``location`` is a local path (local files serve it), False for a URL another source claims:
    the CLI checks that a path exists, and leaves a URL to its source's listing."""
    return isinstance(source_for(location), LocalFiles)


def is_local_folder(location: str) -> bool:
    """True when ``location`` is written as a local path (a local folder's destination serves it), False for a
    URL another destination claims (an object store's): what needs a file on this machine (a memory-mapped
    index) keeps it beside a local location, elsewhere for the others."""
    return isinstance(destination_for(location), LocalFolder)


def destination_for(location: str) -> Destination:
    """The destination that writes (and reads back) ``location``: an s3:// URL's prefix, else a local folder."""
    for destination in DESTINATIONS:
        if destination.owns(location):
            return destination
    raise ValueError(f"Expected a path (no destination writes URLs of this kind). Received: {location!r}")
