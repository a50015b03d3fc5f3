"""The OpenVINO conversion cache: one folder per conversion, trusted only when it says it is that conversion
and its digests match.

An entry is ``<cache_dir>/<key>/`` holding ``model.xml``, ``model.bin`` and ``about.json``, which records
what the entry is (model, weights, preprocessing, input, outputs, versions) and the SHA-256 of each file.
Reading checks both: an entry whose about.json says it is another conversion than the one its key names (a
folder copied under another model's key, by hand or by a backup tool restoring into the wrong place) is
never run, and neither is a damaged entry (a zero-filled ``model.bin`` of the right size, a truncated file, a
missing about.json); it is converted again and replaced, and the log says why, once. Writing goes to a
``<key>.partial-*`` folder whose files and folder are fsynced before it is renamed into place, so that a
crash leaves a whole entry or a partial folder, never a half-written entry under the real name. Partial
folders (and replaced entries) older than STALE_SECONDS are removed: a conversion is ~100 MB, and a worker
killed while converting leaves one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time

from imgq.models.weights import file_sha256

log = logging.getLogger(__name__)

ABOUT = "about.json"
FILES = ("model.xml", "model.bin")
STALE_SECONDS = 3600
# A conversion takes seconds to minutes; a partial folder an hour old belongs to a worker that died.


class CacheEntry:
    """The cache entry ``key`` under ``cache_dir``, for the conversion ``identity`` describes: what its
    about.json must say (``{field: value}``, JSON values; worker/runtimes/openvino_runtime.py ``_identity``)
    for the entry to be used."""

    def __init__(self, cache_dir: str, key: str, identity: dict | None = None):
        self.cache_dir = cache_dir
        self.folder = os.path.join(cache_dir, key)
        self.identity = identity or {}

    @property
    def xml(self) -> str:
        return os.path.join(self.folder, "model.xml")

    def valid(self) -> bool:
        """True when the entry exists, its about.json says it is the conversion of ``identity``, and each
        file's SHA-256 is the one recorded with it. An entry that exists but does not check out is logged
        (it will be replaced)."""
        if not os.path.isdir(self.folder):
            return False
        problem = self._problem()
        if problem:
            log.warning("OpenVINO cache entry %s is not this conversion (%s): converting again", self.folder, problem)
        return problem is None

    def _problem(self) -> str | None:
        """Why the entry cannot be used, in a few words; None when it can."""
        try:
            with open(os.path.join(self.folder, ABOUT), "rb") as file:
                about = json.loads(file.read(1 << 20))
            recorded = about["sha256"]
            # Cheaper than the digests, and what a copied entry gets wrong: checked first.
            other = next((name for name, value in self.identity.items() if about.get(name) != value), None)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return f"no readable {ABOUT}: {type(exc).__name__}"
        if other is not None:
            return f"made for {other} {about.get(other)!r}, not {self.identity[other]!r}"
        for name in FILES:
            try:
                actual = file_sha256(os.path.join(self.folder, name))
            except OSError as exc:
                return f"{name}: {exc.strerror or exc}"
            if actual != recorded.get(name):
                return f"{name} differs from its recorded digest"
        return None

    def about(self) -> dict:
        """The entry's about.json ({} when unreadable)."""
        try:
            with open(os.path.join(self.folder, ABOUT), "rb") as file:
                return json.loads(file.read(1 << 20))
        except (OSError, ValueError):
            return {}

    def save(self, write_files, about: dict) -> bool:
        """Write a new entry: ``write_files(folder)`` writes model.xml and model.bin into a partial folder;
        their digests go into about.json with ``about``; everything is fsynced, then the folder is renamed
        into place, replacing a damaged entry. Returns False (logged) when it cannot be cached: a read-only
        or full cache costs the next start its conversion, not this one."""
        remove_stale(self.cache_dir)
        partial = f"{self.folder}.partial-{os.getpid()}-{threading.get_ident()}"
        try:
            os.makedirs(partial, exist_ok=True)
            write_files(partial)
            about = {**about, "sha256": {name: file_sha256(os.path.join(partial, name)) for name in FILES}}
            with open(os.path.join(partial, ABOUT), "w") as file:
                json.dump(about, file)
            for name in (*FILES, ABOUT):
                _fsync_file(os.path.join(partial, name))
            _fsync_folder(partial)
            self._move_into_place(partial)
            _fsync_folder(self.cache_dir)
            return True
        except OSError as exc:  # read-only or full state dir
            log.warning("OpenVINO conversion not cached in %s: %s", self.folder, exc.strerror or exc)
            shutil.rmtree(partial, ignore_errors=True)
            return False

    def _move_into_place(self, partial: str) -> None:
        """Rename ``partial`` to the entry's name. A folder already there (damaged: a valid one would have
        been read) is first renamed aside, then removed: rename() cannot replace a non-empty folder."""
        try:
            os.rename(partial, self.folder)
            return
        except OSError:
            if not os.path.isdir(self.folder):
                raise
        if self._problem() is None:  # another worker cached the same conversion meanwhile: keep its copy
            shutil.rmtree(partial, ignore_errors=True)
            return
        aside = f"{self.folder}.stale-{os.getpid()}-{threading.get_ident()}"
        os.rename(self.folder, aside)
        os.rename(partial, self.folder)
        shutil.rmtree(aside, ignore_errors=True)


def remove_stale(cache_dir: str, older_than: float = STALE_SECONDS) -> list[str]:
    """Remove ``*.partial-*`` and ``*.stale-*`` folders of ``cache_dir`` last changed more than
    ``older_than`` seconds ago; returns their names."""
    removed = []
    try:
        names = os.listdir(cache_dir)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if ".partial-" not in name and ".stale-" not in name:
            continue
        path = os.path.join(cache_dir, name)
        try:
            if now - os.lstat(path).st_mtime < older_than:
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            removed.append(name)
            log.info("Removed a stale OpenVINO conversion folder %s", path)
    return removed


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(path: str) -> None:
    """A folder's entries reach the disk (rename and create are metadata of the folder)."""
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder; the files are synced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
