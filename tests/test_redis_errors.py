"""Redis saying no (OOM, NOPERM, READONLY, WRONGTYPE, NOAUTH) reaches a user of the CLI as one line.

Each server here is started by the test itself (tests/processes.py), configured as the case needs: a full
one (maxmemory 1, noeviction), one whose user may only read, a read-only replica, one with a password. The
shared server of the other tests is never reconfigured.
"""

from __future__ import annotations

import uuid

import pytest
import redis
from click.testing import CliRunner

from imgq.results.store import ResultStore
from producer.cli import cli
from tests.conftest import make_settings


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(b"not decoded by the producer")
    return folder


def imgq(url: str, tmp_path, *args: str):
    settings = make_settings(url, tmp_path)
    result = CliRunner().invoke(cli, list(args), env=settings.as_env(), catch_exceptions=False)
    return result, settings


def one_line(result) -> str:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_a_full_redis_refuses_submit_in_one_line(server, tmp_path, photos):
    url = server("--maxmemory", "1", "--maxmemory-policy", "noeviction")
    result, _ = imgq(url, tmp_path, "submit", str(photos))
    assert one_line(result) == ("Error: Redis refused a command: command not allowed when used memory > "
                                "'maxmemory'. (Redis is full: raise its maxmemory or free memory; imgq's keys "
                                "must not be evicted, see docs/reliability.md)")


def test_a_user_without_write_permission_is_one_line(server, tmp_path, photos):
    url = server()
    redis.Redis.from_url(url).acl_setuser("reader", enabled=True, passwords=["+readerpw"], keys=["*"],
                                          commands=["+@read", "+@connection", "+info", "+client"])
    reader = url.replace("redis://", "redis://reader:readerpw@")
    result, _ = imgq(reader, tmp_path, "submit", str(photos))
    line = one_line(result)
    assert line.startswith("Error: Redis refused a command: this user has no permissions to run the '")
    assert line.endswith(" (the Redis user lacks a permission imgq needs: see its ACL)") and "readerpw" not in line


def test_a_read_only_replica_is_one_line(server, tmp_path, photos):
    primary = server()
    replica = server("--replicaof", "127.0.0.1", primary.rsplit(":", 1)[1].split("/")[0])
    result, _ = imgq(replica, tmp_path, "submit", str(photos))
    assert one_line(result) == ("Error: Redis refused a command: You can't write against a read only replica. "
                                "(a read-only replica: point imgq at the primary)")


def test_a_key_of_the_wrong_type_is_one_line(redis_url, tmp_path):
    settings = make_settings(redis_url, tmp_path, namespace=f"imgqtest-{uuid.uuid4().hex[:8]}")
    store = ResultStore.from_settings(settings)
    store.redis.set(store.keys.jobs, "not a sorted set")  # another program writing into imgq's namespace
    try:
        result = CliRunner().invoke(cli, ["status"], env=settings.as_env(), catch_exceptions=False)
        assert one_line(result) == ("Error: Redis refused a command: WRONGTYPE Operation against a key holding "
                                    "the wrong kind of value")
    finally:
        store.redis.delete(store.keys.jobs)


def test_no_password_for_a_redis_that_wants_one_is_one_line(server, tmp_path, photos):
    url = server("--requirepass", "s3cretpw", password="s3cretpw")
    result, _ = imgq(url.replace(":s3cretpw@", ""), tmp_path, "submit", str(photos))
    assert one_line(result).startswith("Error: Redis at redis://127.0.0.1:")
    assert "refused the credentials: Authentication required." in result.output
    result, _ = imgq(url.replace("s3cretpw", "wrongpw"), tmp_path, "status")
    assert "refused the credentials: " in one_line(result) and "wrongpw" not in result.output


def test_a_full_broker_refusing_a_publish_through_kombu_is_one_line(server, tmp_path, photos):
    url = server("--maxmemory-policy", "noeviction")
    result, settings = imgq(url, tmp_path, "submit", str(photos))
    job = result.stdout.strip()
    client = redis.Redis.from_url(url)
    client.delete(ResultStore.from_settings(settings).keys.kombu_queue)  # its batches gone, as if taken and lost
    client.config_set("maxmemory", "1")  # this test's own server
    result = CliRunner().invoke(cli, ["requeue", job], env=settings.as_env(), catch_exceptions=False)
    assert one_line(result).startswith("Error: Redis refused a command: ")
    assert "maxmemory" in result.output, result.output
