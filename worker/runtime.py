"""What one worker process holds: the settings, the loaded model, the store, the decoding threads.

Built once per process, after any fork (see worker/app.py), and shared by every task the process runs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

from imgq.deliveries import Deliveries
from imgq.settings import Settings
from imgq.store import ResultStore
from worker.gather import Gatherer
from worker.reconcile import reconcile_forever

log = logging.getLogger(__name__)

HEARTBEATS_MISSED = 3
# A worker refreshes its key every IMGQ_HEARTBEAT_SECONDS and the key lives three times as long: a worker
# is seen as gone after three missed beats. A thread beats, so a worker busy with a long batch stays alive.

RATE_WINDOW = 60.0
# The heartbeat's images/s is over the last minute: recent enough to show a stall, long enough to span
# several batches.


@dataclass
class Runtime:
    settings: Settings
    classifier: object
    gatherer: Gatherer
    store: ResultStore
    deliveries: Deliveries
    pool: ThreadPoolExecutor
    worker_id: str
    binary_redis: redis.Redis  # the results store's Redis, returning bytes: for packed values (imgq/known.py)
    started_at: float = field(default_factory=time.time)
    images_done: int = 0
    _count_lock: threading.Lock = field(default_factory=threading.Lock)
    pool_name: str = ""  # what Celery runs (set by worker/app.py); the setting until then
    concurrency: int = 0  # ditto: `--concurrency N` on the command line overrides IMGQ_CONCURRENCY
    in_hand: set[tuple[str, int]] = field(default_factory=set)
    # (job, batch) of the batches this process is classifying now. Kept in memory, so that it stays true
    # while Redis is unreachable; the heartbeat publishes it for the reconciler (worker/reconcile.py).
    _recent: deque = field(default_factory=deque)  # (time.monotonic(), images) of the last RATE_WINDOW

    def count_done(self, images: int) -> None:
        now = time.monotonic()
        with self._count_lock:  # tasks run in several threads
            self.images_done += images
            self._recent.append((now, images))
            self._forget_before(now - RATE_WINDOW)

    @contextmanager
    def holding(self, job: str, batch: int) -> Iterator[None]:
        """The batch is in this worker's hands while the block runs."""
        with self._count_lock:
            self.in_hand.add((job, batch))
        try:
            yield
        finally:
            with self._count_lock:
                self.in_hand.discard((job, batch))

    @property
    def batches_in_hand(self) -> int:
        return len(self.in_hand)

    def images_per_second(self) -> float:
        """Images recorded per second over the last minute (over the time since start, if shorter)."""
        now = time.monotonic()
        with self._count_lock:
            self._forget_before(now - RATE_WINDOW)
            images = sum(n for _, n in self._recent)
        window = min(RATE_WINDOW, max(time.time() - self.started_at, 1.0))
        return images / window

    def _forget_before(self, moment: float) -> None:
        while self._recent and self._recent[0][0] < moment:
            self._recent.popleft()

    def heartbeat(self, hostname: str) -> dict:
        return {"hostname": hostname, "pid": os.getpid(), "host": socket.gethostname(),
                "weights": self.classifier.weights_id, "precision": self.classifier.precision,
                "runtime": self.classifier.runtime,
                "pool": self.pool_name or self.settings.pool, "batch_size": self.settings.batch_size,
                "started_at": self.started_at, "images_done": self.images_done,
                "in_hand": sorted(self.in_hand),
                "model_load_seconds": round(self.classifier.load_seconds, 2),
                "concurrency": self.concurrency or self.settings.concurrency,
                "batches_in_hand": self.batches_in_hand,
                "images_per_second": round(self.images_per_second(), 2)}


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime(hostname: str | None = None) -> Runtime:
    """This process's runtime, built on first use (loading the model takes seconds)."""
    global _runtime
    with _lock:
        if _runtime is None:
            from worker.app import settings

            _runtime = _build(settings, hostname or f"imgq@{socket.gethostname()}")
        return _runtime


def _build(settings: Settings, hostname: str) -> Runtime:
    from worker.model import load_classifier  # imports TensorFlow or OpenVINO: only here, after any fork

    classifier = load_classifier(settings.weights, settings.batch_size, settings.precision, settings.runtime,
                                 cache_dir=os.path.join(settings.state_dir, "openvino"))
    store = ResultStore.from_settings(settings)
    runtime = Runtime(settings, classifier, Gatherer(classifier, settings.batch_size), store,
                      Deliveries(store.redis, store.keys),
                      ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="imgq-decode"),
                      worker_id=f"{hostname}:{os.getpid()}",
                      binary_redis=redis.Redis.from_url(settings.effective_results_url, socket_connect_timeout=5))
    threading.Thread(target=_beat, args=(runtime, hostname), name="imgq-heartbeat", daemon=True).start()
    threading.Thread(target=reconcile_forever, args=(runtime,), name="imgq-reconcile", daemon=True).start()
    return runtime


def _beat(runtime: Runtime, hostname: str) -> None:
    key = runtime.store.keys.worker(runtime.worker_id)
    period = runtime.settings.heartbeat_seconds
    while True:
        try:
            runtime.store.redis.set(key, json.dumps(runtime.heartbeat(hostname)), ex=HEARTBEATS_MISSED * period)
        except Exception as exc:  # Redis restarting: keep beating, the worker reconnects by itself
            log.warning("Heartbeat failed: %s", exc)
        time.sleep(period)
