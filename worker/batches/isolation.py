"""Decoding a batch one image at a time, to find the image that kills every worker that tries it.

While an image of an isolated batch is decoded (or hashed), it is the only file this process reads: the
decoding threads of other batches wait (``DecodeLock``). So when the process dies then, the suspect entry
names the one image it was reading, not a neighbour that another thread happened to decode when it crashed
(the cause of a neighbour's false ``worker_crashed`` on a busy machine). A suspect counts only once the
process that set it is gone (imgq/jobs/deliveries.py), and an image that has a record is never marked crashed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

CRASHED_MESSAGE = "a worker process died while decoding this image"


class DecodeLock:
    """Many ordinary decodes at once (``shared``), or one isolated decode alone (``exclusive``).

    A waiting exclusive decode goes first: new shared decodes wait for it, so it cannot starve.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._exclusive and not self._shared)
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class Isolation:
    """The suspects of one isolated delivery of a batch of ``job``."""

    def __init__(self, job: str, runtime):
        self.job = job
        self.runtime = runtime
        self.deliveries = runtime.deliveries
        self.suspects = self.deliveries.suspects(job)

    def crashed(self, image: int) -> bool:
        """True when a process died while reading ``image`` alone (and that process is really gone)."""
        entry = self.suspects.get(image)
        silent_after = 2 * self.runtime.settings.heartbeat_seconds  # two beats missed
        return entry is not None and self.deliveries.died_on(entry, silent_after)

    def alone(self, image: int, work: Callable[[], T]) -> T:
        """``work()`` with ``image`` marked as suspect and nothing else read by this process meanwhile."""
        runtime = self.runtime
        with runtime.decode_lock.exclusive():
            entry = self.deliveries.suspect(self.job, image, runtime.worker_id, runtime.started_at)
            try:
                return work()  # if the process dies here, the entry stays: the next delivery reads it
            finally:  # returned or raised (a store that did not answer): the process lives, no suspect
                self.deliveries.clear_suspect(self.job, image, entry)
