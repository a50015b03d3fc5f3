"""What a worker says while it starts, and how it stops when it cannot serve.

From the moment it begins loading its model, a worker beats in state ``starting`` (imgq.contract), naming the
step it is on (``loading resnet50``, ``warming up resnet50 on openvino 2026.4.1 (32 images)``), and prints each
step as one line on stderr: a worker warming up is told from one that hangs, by `imgq classify` (which shows
the step while it waits) and by anyone reading the heartbeats. Once the model is loaded the ready heartbeat
(worker/process.py) takes the same key over.

A worker that cannot serve (any exception while it loads, a metrics port it cannot bind) prints one line a
problem, the last ending in ``; exiting`` (STOPS), beats ``failed`` with its reason and exits: never a
traceback, never a worker that looks alive while it cannot classify. `imgq classify` reads STOPS in the log
of the worker it started (producer/local/workers.py), and the failed beat of any other.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from typing import NoReturn

import redis

from imgq.contract import FAILED, STARTING, WORKER_SAYS, WORKER_STOPS, Heartbeat
from imgq.models.spec import ModelSpec
from imgq.results.store import ResultStore
from imgq.settings import Settings

log = logging.getLogger(__name__)

HEARTBEATS_MISSED = 3  # a key lives three beats: a worker is seen as gone after three missed beats
STOPS = WORKER_STOPS  # ends the last line of a worker that stops (producer/local/workers.py reads it)
EXIT_CANNOT_SERVE = 2


def identity(hostname: str | None) -> tuple[str, str]:
    """``(hostname, worker id)`` of this process: Celery's node name (``imgq@<host>`` where Celery gives none,
    as in a prefork child) and the key of its heartbeat, which adds the pid."""
    name = hostname or f"imgq@{socket.gethostname()}"
    return name, f"{name}:{os.getpid()}"


def say(line: str) -> None:
    """One line of the worker's own (``imgq worker: ...``) on stderr. To file descriptor 2 itself: Celery may
    have replaced sys.stderr with a logger that would prefix the line."""
    os.write(2, f"{WORKER_SAYS}{line}\n".encode(errors="replace"))


def described(exc: BaseException) -> str:
    """``ValueError: Seed must be ...``: an unexpected exception's kind and message, on one line."""
    message = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def stop_lines(problems: list[str]) -> list[str]:
    """``problems`` as the lines a stopping worker prints: the last one ends with STOPS."""
    lines = [p for p in problems if p.strip()] or ["cannot serve"]
    return [*lines[:-1], lines[-1].rstrip().rstrip(".") + STOPS]


class Startup:
    """The ``starting`` heartbeat of this process, beaten from a thread until ``hand_over`` or ``fail``.

    Redis away is not fatal here (the worker reconnects later, as the ready heartbeat does): a beat that
    cannot be sent is skipped with a warning.
    """

    def __init__(self, settings: Settings, served: ModelSpec, hostname: str | None):
        self.settings = settings
        self.hostname, self.worker_id = identity(hostname)
        self.store = ResultStore.from_settings(settings)
        self.beat = Heartbeat(hostname=self.hostname, pid=os.getpid(), host=socket.gethostname(), model=served.name,
                              model_id=served.id, weights=settings.weights, precision=settings.precision,
                              runtime=settings.runtime, pool=settings.pool, concurrency=settings.concurrency,
                              batch_size=settings.batch_size, started_at=time.time(), state=STARTING,
                              detail=f"loading {served.name}")
        self._done = threading.Event()
        self._lock = threading.Lock()  # a beat is sent whole, and never after hand_over or fail
        self._thread = threading.Thread(target=self._beat_forever, name="imgq-startup-beat", daemon=True)

    def start(self) -> Startup:
        self._thread.start()
        return self

    def step(self, doing: str) -> None:
        """The worker is now ``doing`` this: one line on stderr, and a beat at once."""
        say(doing)
        with self._lock:
            self.beat = _replaced(self.beat, detail=doing)
            self._send(self.beat)

    def hand_over(self) -> None:
        """The model is loaded: stop beating ``starting``; the ready heartbeat takes the key over."""
        with self._lock:
            self._done.set()

    def forget(self) -> None:
        """The worker stops before it is ready (SIGTERM): remove its key at once. Never raises, never blocks
        for long: it runs in a signal handler, whose interrupted thread may hold the lock (the key then
        expires by itself)."""
        if not self._lock.acquire(timeout=2.0):
            return
        try:
            if self._done.is_set():
                return
            self._done.set()
            self.store.forget_heartbeat(self.worker_id)
        except (redis.RedisError, OSError) as exc:
            log.warning("Could not remove the heartbeat: %s", exc)
        finally:
            self._lock.release()

    def fail(self, problems: list[str], code: int = EXIT_CANNOT_SERVE) -> NoReturn:
        """Stop this worker: ``problems`` as one line each (the last ending in STOPS), a ``failed`` beat
        carrying them, then exit with ``code``."""
        lines = stop_lines(problems)
        for line in lines:
            say(line)
        with self._lock:
            self._done.set()
            self._send(_replaced(self.beat, state=FAILED, detail="; ".join(lines).removesuffix(STOPS)))
        os._exit(code)

    def _beat_forever(self) -> None:
        period = self.settings.heartbeat_seconds
        while not self._done.is_set():
            with self._lock:
                if self._done.is_set():
                    return
                self._send(self.beat)
            self._done.wait(period)

    def _send(self, beat: Heartbeat) -> None:
        """Under the lock. A Redis error is a warning: the worker goes on (and its ready heartbeat retries)."""
        try:
            self.store.send_heartbeat(self.worker_id, _replaced(beat, sent_at=time.time()),
                                      HEARTBEATS_MISSED * self.settings.heartbeat_seconds)
        except (redis.RedisError, OSError) as exc:
            log.warning("Heartbeat failed: %s", exc)


def _replaced(beat: Heartbeat, **changes) -> Heartbeat:
    return dataclasses.replace(beat, **changes)
