"""Which byte source serves a location: the one place that looks at a location's form (a path or a URL).

A new source (object storage) is one more entry in ``SOURCES``; nothing downstream branches on schemes.
"""

from __future__ import annotations

from imgq.storage.base import ByteSource
from imgq.storage.local import LocalFiles

SOURCES: tuple[ByteSource, ...] = (LocalFiles(),)
# In the order they are asked; local files last, since they take every location the others leave.


def source_for(location: str) -> ByteSource:
    """The source that serves ``location``. Raises ValueError for a location no source serves."""
    for source in SOURCES:
        if source.owns(location):
            return source
    raise ValueError(f"Expected a path (no byte source serves URLs of this kind). Received: {location!r}")
