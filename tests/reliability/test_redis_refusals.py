"""Redis refusing writes (out of memory at maxmemory with noeviction) loses no batch. Against a Redis server
this test starts itself: its maxmemory is changed, never the shared server's."""

from __future__ import annotations

import dataclasses
import time

import pytest
import redis

from imgq.results.store import ResultStore
from tests.processes import free_port, start_redis, wait_for_redis
from tests.reliability.conftest import assert_exactly_one_record_each, small_images, submit, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def own_redis(fast_settings, tmp_path):
    """fast_settings on a private Redis server (broker and results)."""
    port = free_port()
    server = start_redis(port, tmp_path / "redis", tmp_path / "redis.log", "--maxmemory-policy", "noeviction")
    url = f"redis://127.0.0.1:{port}/0"
    wait_for_redis(url, server)
    yield dataclasses.replace(fast_settings, broker_url=url), redis.Redis.from_url(url)
    server.stop()


def test_out_of_memory_loses_no_batch(own_redis, start_worker, tmp_path):
    settings, admin = own_redis
    paths = small_images(tmp_path / "in", 120)
    store = ResultStore.from_settings(settings)
    start_worker(settings)
    job = submit(settings, paths)
    wait_until(lambda: store.status(job).processed >= 8, 120, "the first batches")
    admin.config_set("maxmemory", 1)  # every write refused: OOM command not allowed
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        admin.set("probe", 1)
    records_now = lambda: admin.hlen(store.keys.results(job))  # noqa: E731 (a plain read: MULTI is refused now)
    at_oom = records_now()
    time.sleep(8)  # long enough for tasks to fail, be acknowledged and the queue to drain, before the fix
    assert records_now() == at_oom < len(paths)  # nothing written meanwhile
    admin.config_set("maxmemory", 0)
    wait_until(lambda: store.status(job).finished, 180, "the job to complete once Redis takes writes again")
    records = assert_exactly_one_record_each(settings, job, paths)
    assert {r["status"] for r in records} == {"ok"}
