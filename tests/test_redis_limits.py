"""imgq.redis_limits: a Redis that may evict imgq's keys is named at worker start and in `imgq status --workers`.

Every server here is this test's own, started with the policy under test; the shared one is never touched.
"""

from __future__ import annotations

import json

import pytest
import redis
from click.testing import CliRunner

from imgq.redis_limits import eviction_warning, redis_warning
from imgq.results.store import ResultStore
from producer.cli import cli
from tests.conftest import make_settings
from tests.processes import free_port, start_worker, wait_for_workers


@pytest.mark.parametrize(("policy", "victims"), [
    ("allkeys-lru", "any key, imgq's queued batches, jobs and results included"),
    ("allkeys-random", "any key, imgq's queued batches, jobs and results included"),
    ("volatile-ttl", "keys with an expiry before their time, imgq's heartbeats, locks and staged batches"),
])
def test_an_evicting_policy_is_named_with_what_it_evicts(server, policy, victims):
    client = redis.Redis.from_url(server("--maxmemory-policy", policy, "--maxmemory", "100mb"))
    warning = eviction_warning(client, "Redis")
    assert warning.startswith(f"Redis has maxmemory-policy {policy}: when it reaches maxmemory 104857600 bytes it "
                              f"evicts {victims}")
    assert warning.endswith("Set maxmemory-policy noeviction (a full Redis then refuses writes with OOM, and imgq "
                            "says so).")


def test_noeviction_says_nothing_and_no_maxmemory_is_said(server):
    url = server("--maxmemory-policy", "noeviction", "--maxmemory", "100mb")
    assert eviction_warning(redis.Redis.from_url(url)) is None
    url = server("--maxmemory-policy", "allkeys-lru")
    assert "when it reaches a maxmemory (none is set now) it evicts" in eviction_warning(redis.Redis.from_url(url))


def test_a_server_refusing_config_is_not_checked(server):
    url = server("--maxmemory-policy", "allkeys-lru")
    redis.Redis.from_url(url).acl_setuser("app", enabled=True, passwords=["+apppw"], keys=["*"],
                                          commands=["+@all", "-config"])
    client = redis.Redis.from_url(url.replace("redis://", "redis://app:apppw@"))
    assert eviction_warning(client) is None


def test_broker_and_results_are_checked_apart(server, tmp_path):
    safe, evicting = server(), server("--maxmemory-policy", "volatile-lru")
    settings = make_settings(safe, tmp_path, results_url=evicting)
    assert redis_warning(settings).startswith(f"The results Redis at {evicting} has maxmemory-policy volatile-lru")
    settings = make_settings(evicting, tmp_path)
    assert redis_warning(settings).startswith(f"Redis at {evicting} has maxmemory-policy volatile-lru")
    assert redis_warning(make_settings(f"redis://127.0.0.1:{free_port()}/0", tmp_path)) is None  # unreachable


@pytest.mark.slow
def test_a_worker_on_an_evicting_redis_says_so_and_status_shows_it(server, tmp_path):
    url = server("--maxmemory-policy", "allkeys-lru")
    settings = make_settings(url, tmp_path, heartbeat_seconds=1)
    store = ResultStore.from_settings(settings)
    worker = start_worker(settings, "evict", tmp_path / "worker.log")
    try:
        wait_for_workers(store, [worker])
        expected = f"Redis at {url} has maxmemory-policy allkeys-lru: when it reaches a maxmemory"
        [heartbeat] = store.workers()
        [warning] = heartbeat.warnings
        assert warning.startswith(expected)
        result = CliRunner().invoke(cli, ["status", "--workers"], env=settings.as_env(), catch_exceptions=False)
        assert f"    WARNING: {expected}" in result.stdout
        shown = json.loads(CliRunner().invoke(cli, ["status", "--workers", "--json"], env=settings.as_env()).stdout)
        assert shown["workers"][0]["warnings"] == [warning]
    finally:
        worker.stop()
    assert expected in worker.output()  # the worker's log, at start
