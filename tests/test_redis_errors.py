"""Redis saying no (OOM, NOPERM, READONLY, WRONGTYPE, NOAUTH) reaches a user of the CLI as one line.

Each server here is started by the test itself (tests/processes.py), configured as the case needs: a full
one (maxmemory 1, noeviction), one whose user may only read, a read-only replica, one with a password. The
shared server of the other tests is never reconfigured.
"""

from __future__ import annotations

import http.server
import socketserver
import subprocess
import threading
import uuid

import pytest
import redis
from click.testing import CliRunner

from imgq.results.store import ResultStore
from producer.cli import cli
from producer.local.workers import redis_answers
from tests.conftest import make_settings
from tests.processes import start_worker


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
    """The one error line of a command that failed; `imgq classify` says first which Redis it uses (issue
    25.5), before it uses it: that line is not an error."""
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("Broker: ")]
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


# A broker URL whose port another kind of server listens on (issue 25.6): a web server, or a line protocol's.


class _WebServer(http.server.BaseHTTPRequestHandler):
    """What a web server answers to Redis's first command: "HTTP/1.1 400 Bad Request". The standard library's
    handler answers a request line it cannot parse as HTTP/0.9 would, a page without a status line; nginx,
    Apache and Go's server answer with one, as this does."""

    default_request_version = protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass


class _LineServer(socketserver.StreamRequestHandler):
    """A line protocol's server that answers "-ERR ..." to any line it does not know, as POP3's does."""

    def handle(self) -> None:
        for _ in self.rfile:
            self.wfile.write(b"-ERR bad request\r\n")


class _Quiet:
    """A server that leaves out the traceback of a client that hangs up before the answer is written."""

    def handle_error(self, request, client_address) -> None:
        pass


class _QuietWebServer(_Quiet, http.server.ThreadingHTTPServer):
    pass


class _QuietLineServer(_Quiet, socketserver.ThreadingTCPServer):
    pass


def _serve(server: socketserver.BaseServer):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"redis://:hunter2@127.0.0.1:{server.server_address[1]}/0"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def web_server():
    """A URL with a password whose port a real HTTP server (http.server, on loopback) listens on."""
    yield from _serve(_QuietWebServer(("127.0.0.1", 0), _WebServer))


@pytest.fixture
def line_server():
    yield from _serve(_QuietLineServer(("127.0.0.1", 0), _LineServer))


def _not_redis(url: str) -> str:
    masked = url.replace(":hunter2@", ":***@")
    return f"Error: The server at {masked} does not speak the Redis protocol (it answered "


COMMANDS = [("status",), ("status", "--workers"), ("submit", "{photos}"), ("classify", "{photos}"),
            ("results", "job1"), ("wait", "job1"), ("cancel", "job1"), ("delete", "job1"), ("requeue", "job1"),
            ("tag", "job1"), ("report", "job1"), ("schedule", "list"), ("schedule", "show", "nightly"),
            ("schedule", "add", "nightly", "{photos}", "--every", "1h"), ("beat",)]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_web_server_at_the_broker_url_is_one_line_for_every_command(web_server, tmp_path, photos, command):
    args = [arg.format(photos=photos) for arg in command]
    result, _ = imgq(web_server, tmp_path, *args)
    line = one_line(result)
    assert line.startswith(_not_redis(web_server)), line
    assert "HTTP/1.1 400" in line and "hunter2" not in result.output


@pytest.mark.parametrize("command", [("status",), ("submit", "{photos}")], ids=" ".join)
def test_a_server_refusing_redis_first_command_is_not_taken_for_redis(line_server, tmp_path, photos, command):
    # Its "-ERR" reads as a Redis error reply, to HELLO, which every Redis since 6 answers (an older one says
    # "unknown command", and redis-py speaks the older protocol): the server is no Redis.
    result, _ = imgq(line_server, tmp_path, *[arg.format(photos=photos) for arg in command])
    assert one_line(result).startswith(_not_redis(line_server)) and "bad request" in result.output


def test_a_redis_refusing_a_command_is_still_a_refusal(server, tmp_path):
    # What tells the two apart must not take a real Redis's refusal of the handshake for another protocol:
    # SELECT of a database the server has not.
    url = server("--databases", "2").replace("/0", "/5")
    result, _ = imgq(url, tmp_path, "status")
    assert one_line(result) == "Error: Redis refused a command: DB index is out of range"


def test_a_web_server_for_the_results_store_is_named_not_the_broker(web_server, redis_url, tmp_path):
    settings = make_settings(redis_url, tmp_path, results_url=web_server)
    result = CliRunner().invoke(cli, ["status"], env=settings.as_env(), catch_exceptions=False)
    assert one_line(result).startswith(_not_redis(web_server))


def test_a_web_server_is_no_redis_answering(web_server, line_server, redis_url):
    # `imgq classify` with nothing configured starts a Redis of its own when none answers at 127.0.0.1:6379:
    # a web server there is none (before: its InvalidResponse escaped as a traceback).
    assert not redis_answers(web_server) and not redis_answers(line_server) and redis_answers(redis_url)


@pytest.mark.slow
def test_a_worker_with_a_web_server_for_broker_stops_in_one_line(web_server, tmp_path):
    settings = make_settings(web_server, tmp_path)
    worker = start_worker(settings, "foreign", tmp_path / "worker.log")
    try:
        code = worker.popen.wait(timeout=120)  # before the fix it loads the model, then retries for good
    except subprocess.TimeoutExpired:
        code = None
    finally:
        worker.stop()
    output = worker.output()
    lines = [line for line in output.splitlines() if line.startswith("imgq worker:")]
    assert code == 2 and "Traceback" not in output and "ready in" not in output, output[-3000:]
    assert len(lines) == 1 and lines[0].startswith(
        f"imgq worker: {_not_redis(web_server).removeprefix('Error: ')}"), output[-3000:]
    assert "hunter2" not in output
