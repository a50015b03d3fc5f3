"""What a collection in object storage keeps on this machine: ``<state dir>/indexes/<digest of the dump root>/``,
one folder per job (and ``collections/`` for the indexes of several jobs), holding the approximate index
(imgq/alike/search.py) and, per job, ``batches.json``: what opening the collection needs of each batch object (its
rows, least and greatest image ids, model, weights and width), under the object's version as its listing gives it
(size and ETag). A search then lists the job's prefix and reads only the objects it has not seen in that version,
instead of a GET of every batch object to read its header. The file is this machine's cache: read as imgq reads
files (no link followed, a regular file, a size cap), anything it cannot take from it read again from the store,
and written whole or not at all (a temporary name, then a rename); a folder that cannot take it costs the next
search its reads, nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass

from imgq.storage.files import atomic_path, read_regular

INDEXES = "indexes"  # <state dir>/indexes/
HEADERS = "batches.json"
HEADERS_KIND = "imgq-batch-headers-v1"  # a change of what is remembered makes the old files unread
MAX_HEADERS_BYTES = 256 * 1024**2  # ~150 bytes a batch file: over a million files of one job


@dataclass(frozen=True)
class Header:
    """What a collection needs of one batch file without its vectors (imgq/alike/collection.py ``_header``), and
    the ``version`` of the file it was read from."""

    rows: int
    images: tuple[int, int]
    model: str
    weights: str
    features: int
    version: str


def folder(state_dir: str, root: str, name: str) -> str:
    """The folder on this machine of job ``name`` (or ``collections``) under the dump root ``root``."""
    return os.path.join(state_dir, INDEXES, hashlib.blake2b(root.encode(), digest_size=8).hexdigest(), name)


def remembered(place: str) -> dict[str, Header]:
    """The headers kept in ``place`` (a job's folder), by file name; {} when there are none or the file is not
    one this module wrote (a link, too large, damaged: it is written again)."""
    try:
        found = read_regular(os.path.join(place, HEADERS), MAX_HEADERS_BYTES)
    except (OSError, ValueError):
        return {}
    if found is None:
        return {}
    try:
        data = json.loads(found[0])
        if data.get("kind") != HEADERS_KIND:
            return {}
        return {str(name): Header(int(h["rows"]), (int(h["images"][0]), int(h["images"][1])), str(h["model"]),
                                  str(h["weights"]), int(h["features"]), str(h["version"]))
                for name, h in data["files"].items()}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return {}


def remember(place: str, headers: dict[str, Header]) -> None:
    """Keep ``headers`` (by file name: the job's files as now listed) in ``place``, replacing what was there; a
    folder that cannot take it is left as it is."""
    data = {"kind": HEADERS_KIND, "files": {name: asdict(header) for name, header in headers.items()}}
    with contextlib.suppress(OSError):
        os.makedirs(place, exist_ok=True)
        with atomic_path(os.path.join(place, HEADERS)) as tmp, open(tmp, "w", encoding="utf-8") as file:
            json.dump(data, file)
