"""Every worker has a name of its own, and a worker's concurrency stays within what its prefetch allows
(issue 25.8). Real worker processes serving the small greyscale CNN of tests/user_models.py (its model loads in
seconds) against the session's Redis, each test in a namespace of its own."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from imgq.results.store import ResultStore
from tests import user_models
from tests.conftest import make_settings
from tests.processes import Process, clean_env, start_worker, wait_for_output, wait_for_workers

pytestmark = pytest.mark.slow

EXIT_TIMEOUT = 120.0  # importing Celery on a busy 2-core machine; a worker that does not refuse loads its model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(user_models.brightness_folder(tmp_path_factory.mktemp("model") / "brightness"))


@pytest.fixture
def own(redis_url, tmp_path, folder):
    """Settings of this test's own namespace, serving the brightness model; its keys deleted afterwards."""
    from imgq.results.store import delete_namespace

    settings = make_settings(redis_url, tmp_path, model=folder, weights="imagenet")
    yield settings
    delete_namespace(redis_url, settings.namespace)


def unnamed_worker(settings, log, *args: str, env: dict[str, str] | None = None) -> Process:
    """`python -m worker` without -n: the name is the worker's to choose."""
    argv = [sys.executable, "-m", "worker", "--loglevel", "INFO", *args]
    return Process(argv, clean_env(**{**settings.as_env(), **(env or {})}), log).start()


def exit_code(worker: Process) -> int | None:
    """The worker's exit code, or None when it is still running after EXIT_TIMEOUT (then it is stopped)."""
    try:
        return worker.popen.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        worker.stop()
        return None


def refusal(worker: Process) -> str:
    """The one line the worker stopped with (``imgq worker: ...``), checked to be the only one."""
    output = worker.output()
    lines = [line for line in output.splitlines() if line.startswith("imgq worker: ")]
    assert len(lines) == 1 and "Traceback" not in output and " ready in " not in output, output[-3000:]
    return lines[0]


def test_two_workers_on_one_machine_get_names_of_their_own(own, tmp_path):
    store = ResultStore.from_settings(own)
    workers = [unnamed_worker(own, tmp_path / f"worker-{i}.log") for i in range(2)]
    try:
        wait_for_workers(store, workers)
        names = {beat.pid: beat.hostname for beat in store.workers()}
        host = socket.gethostname()
        assert names == {w.pid: f"imgq-brightness-{w.pid}@{host}" for w in workers}, names
        for worker in workers:  # Celery's banner, printed once the consumer starts, says the same name
            wait_for_output(worker, rf"imgq-brightness-{worker.pid}@{re.escape(host)} v\d")
    finally:
        for worker in workers:
            worker.stop()


def test_a_worker_named_as_a_live_one_is_refused_before_loading_its_model(own, tmp_path):
    store = ResultStore.from_settings(own)
    first = start_worker(own, "twin", tmp_path / "first.log")
    try:
        wait_for_workers(store, [first])
        second = start_worker(own, "twin", tmp_path / "second.log")
        code = exit_code(second)
        line = refusal(second)
    finally:
        first.stop()
    host = socket.gethostname()
    assert code == 2, second.output()[-3000:]
    assert line == (f"imgq worker: a live worker is already named twin@{host} (pid {first.pid} on {host}): give "
                    f"this one another name with -n, or leave -n out for a name of its own")


@pytest.mark.parametrize(("args", "env", "said"), [
    ((), {"IMGQ_CONCURRENCY": "1000"}, "IMGQ_CONCURRENCY must be from 1 to 64. Received: '1000'"),
    ((), {"IMGQ_CONCURRENCY": "0"}, "IMGQ_CONCURRENCY must be from 1 to 64. Received: '0'"),
    (("--concurrency", "100"), {}, "--concurrency 100 is more than 64"),
], ids=["env 1000", "env 0", "option 100"])
def test_a_concurrency_beyond_the_bound_stops_the_worker_in_one_line(own, tmp_path, args, env, said):
    worker = unnamed_worker(own, tmp_path / "worker.log", *args, env=env)
    code = exit_code(worker)
    line = refusal(worker)
    assert code == 2 and said in line, line
