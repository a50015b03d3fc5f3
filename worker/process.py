"""What one worker process holds: the settings, the loaded model, the store, the decoding threads.

Built once per process, after any fork (see worker/app.py), and shared by every task the process runs.
"""

from __future__ import annotations

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

from imgq.contract import MODEL_NAME, Heartbeat
from imgq.jobs.deliveries import Deliveries
from imgq.models.spec import ModelSpec
from imgq.redis_limits import redis_warning
from imgq.results.store import ResultStore
from imgq.settings import Settings
from worker import startup
from worker.batches.gather import Gatherer
from worker.batches.heads import HeadCache
from worker.batches.isolation import DecodeLock
from worker.reconcile import reconcile_forever

log = logging.getLogger(__name__)

HEARTBEATS_MISSED = startup.HEARTBEATS_MISSED
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
    decode_pool: ThreadPoolExecutor  # threads decoding images ahead of the model (IMGQ_DECODE_THREADS)
    worker_id: str
    started_at: float = field(default_factory=time.time)
    # isolated decodes run alone (worker/batches/isolation.py)
    decode_lock: DecodeLock = field(default_factory=DecodeLock)
    images_done: int = 0
    _count_lock: threading.Lock = field(default_factory=threading.Lock)
    celery_pool: str = ""  # the Celery pool this worker runs (set by worker/app.py); the setting until then
    concurrency: int = 0  # ditto: `--concurrency N` on the command line overrides IMGQ_CONCURRENCY
    in_hand: set[tuple[str, int]] = field(default_factory=set)
    # (job, batch) of the batches this process is classifying now. Kept in memory, so that it stays true
    # while Redis is unreachable; the heartbeat publishes it for the reconciler (worker/reconcile.py).
    _recent: deque = field(default_factory=deque)  # (time.monotonic(), images) of the last RATE_WINDOW
    redis_warning: str | None = None  # Redis may evict imgq's keys (imgq/redis_limits.py), checked at start
    heads: HeadCache = field(default_factory=HeadCache)  # heads applied by this process, fetched once
    stopping: threading.Event = field(default_factory=threading.Event)  # set once: no heartbeat after it
    _beat_lock: threading.Lock = field(default_factory=threading.Lock)  # a beat is sent whole or not at all
    spec: ModelSpec | None = None  # the model this worker serves (IMGQ_MODEL), set by _build
    follows_queues: bool = False
    # True when the worker's queues follow this runtime's job_precision (worker/queues.py: the model loaded in
    # the main process); a prefork child's do not: its main process consumes the queues its settings promise.

    @property
    def job_precision(self) -> str:
        """The precision of the jobs this worker takes when they ask for one (worker/queues.py): its runtime's
        when its queues follow it, else the one its settings promise."""
        from worker.queues import expected

        precision = getattr(self.classifier, "job_precision", "")
        return precision if self.follows_queues or precision == expected(self.settings) else ""

    @property
    def model(self) -> str:
        """The name of the model this worker serves: the queue it consumes, the jobs it takes."""
        return self.spec.name if self.spec else MODEL_NAME

    @property
    def model_id(self) -> str:
        """What its records carry in ``model`` (imgq.models.spec.ModelSpec.id)."""
        return self.spec.id if self.spec else MODEL_NAME

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

    def heartbeat(self, hostname: str) -> Heartbeat:
        return Heartbeat(hostname=hostname, pid=os.getpid(), host=socket.gethostname(), model=self.model,
                         model_id=self.model_id, weights=self.classifier.weights_id,
                         precision=self.classifier.precision, job_precision=self.job_precision,
                         precision_note=getattr(self.classifier, "int8_note", ""), runtime=self.classifier.runtime,
                         runtime_choice=getattr(self.classifier, "chosen_by", ""),
                         pool=self.celery_pool or self.settings.pool, batch_size=self.settings.batch_size,
                         started_at=self.started_at, sent_at=time.time(), images_done=self.images_done,
                         in_hand=tuple(sorted(self.in_hand)),
                         model_load_seconds=round(self.classifier.load_seconds, 2),
                         concurrency=self.concurrency or self.settings.concurrency,
                         images_per_second=round(self.images_per_second(), 2),
                         warnings=(self.redis_warning,) if self.redis_warning else ())


_runtime: Runtime | None = None
_lock = threading.Lock()
_starting: startup.Startup | None = None  # this process's start-up beat while its model loads


def get_runtime(settings: Settings, hostname: str | None = None,
                starting: startup.Startup | None = None, follows_queues: bool = False) -> Runtime:
    """This process's runtime, built with ``settings`` on first use (loading the model takes seconds).
    ``starting``: the start-up beat of this process (worker/startup.py), told each step of the load and
    handed over to the ready heartbeat; ``follows_queues``: the worker's queues follow this runtime's
    precision (Runtime.follows_queues), known before its first ready beat says what it serves jobs at. Raises
    what loading raises (worker/app.py turns it into one line)."""
    global _runtime, _starting
    with _lock:
        if _runtime is None:
            _starting = starting
            _runtime = _build(settings, startup.identity(hostname)[0], starting, follows_queues)
        return _runtime


def current() -> Runtime | None:
    """This process's runtime if it was built, else None (never builds one)."""
    return _runtime


def _build(settings: Settings, hostname: str, starting: startup.Startup | None,
           follows_queues: bool = False) -> Runtime:
    from worker.runtimes.auto import Machine
    from worker.runtimes.int8_serving import Int8Options
    from worker.runtimes.loading import load_classifier  # imports TensorFlow or OpenVINO: only here, after any fork

    classifier = load_classifier(settings.weights, settings.batch_size, settings.precision, settings.runtime,
                                 cache_dir=os.path.join(settings.state_dir, "openvino"), model=settings.model,
                                 int8=Int8Options.from_settings(settings),
                                 machine=Machine(quiet_load=settings.auto_quiet_load),
                                 say=starting.step if starting is not None else None)
    store = ResultStore.from_settings(settings)
    worker_id = startup.identity(hostname)[1]
    gatherer = Gatherer(classifier, settings.batch_size, pass_timeout=settings.forward_pass_timeout,
                        on_death=lambda problem: _give_up(store, worker_id, problem))
    runtime = Runtime(settings, classifier, gatherer, store,
                      Deliveries(store.redis, store.keys),
                      ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="imgq-decode"),
                      worker_id=worker_id)
    runtime.spec = classifier.spec  # the model loaded, as worker/app.py resolved it to choose the queue
    runtime.follows_queues = follows_queues
    runtime.redis_warning = redis_warning(settings)
    if runtime.redis_warning:  # before Celery's logging is set up: Python prints warnings on stderr then
        log.warning("%s", runtime.redis_warning)
    if starting is not None:
        starting.hand_over()  # before the first ready beat, which then replaces the starting one for good
    threading.Thread(target=_send_heartbeats, args=(runtime, hostname), name="imgq-heartbeat", daemon=True).start()
    threading.Thread(target=reconcile_forever, args=(runtime,), name="imgq-reconcile", daemon=True).start()
    return runtime


def _send_heartbeats(runtime: Runtime, hostname: str) -> None:
    """The heartbeat thread. Any exception ending it ends the worker (``_give_up``), with one line: a worker
    whose heartbeat stopped would soon look gone while it still held batches, and any Celery worker alive
    without it would take batches nobody can see it hold."""
    try:
        _beat_forever(runtime, hostname)
    except BaseException as exc:  # noqa: BLE001 - whatever it is, this worker can no longer say it is alive
        _give_up(runtime.store, runtime.worker_id, f"the heartbeat thread died ({startup.described(exc)})")


def _beat_forever(runtime: Runtime, hostname: str) -> None:
    period = runtime.settings.heartbeat_seconds
    while not runtime.stopping.is_set():
        problem = runtime.gatherer.problem()
        if problem is not None:
            _give_up(runtime.store, runtime.worker_id, problem)
        with runtime._beat_lock:  # never a beat after stop_heartbeats removed the key
            if runtime.stopping.is_set():
                return
            beat = runtime.heartbeat(hostname)  # outside the try: a beat that cannot be made is a bug, not Redis
            try:
                runtime.store.send_heartbeat(runtime.worker_id, beat, HEARTBEATS_MISSED * period)
            except (redis.RedisError, OSError) as exc:  # Redis restarting: keep beating, the worker reconnects
                log.warning("Heartbeat failed: %s", exc)
        runtime.stopping.wait(period)


def stop_heartbeats() -> None:
    """This process's worker is stopping: stop its heartbeat and remove the key at once, so that nobody
    (`imgq classify` deciding whether to start a worker, `status --workers`, the reconciler) counts on it
    for the three beats the key would outlive it. Does nothing where no runtime was built (prefork's main
    process) or twice. Never raises: Redis away, the key expires by itself."""
    runtime = _runtime
    if runtime is None and _starting is not None:  # stopped while its model loads
        _starting.forget()
    if runtime is None or runtime.stopping.is_set():
        return
    with runtime._beat_lock:
        runtime.stopping.set()
        try:
            runtime.store.forget_heartbeat(runtime.worker_id)
        except Exception as exc:
            log.warning("Could not remove the heartbeat: %s", exc)


EXIT_INFERENCE_GONE = 3


def _give_up(store: ResultStore, worker_id: str, problem: str) -> None:
    """A worker that cannot classify stops saying it is alive and exits: its health check fails at once,
    its supervisor restarts it, and the reconciler queues its batches again (their heartbeat is gone)."""
    for line in startup.stop_lines([problem]):  # "imgq worker: <problem>; exiting"
        startup.say(line)
    try:
        store.forget_heartbeat(worker_id)
    except Exception as exc:  # Redis away: the key expires by itself after three beats
        log.warning("Could not remove the heartbeat: %s", exc)
    os._exit(EXIT_INFERENCE_GONE)
