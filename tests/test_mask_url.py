"""Passwords in Redis URLs: masked in every shape (mask_url, the worker's logs), refused when malformed
(Settings, the CLI) with one line that names the variable and shows no part of the password."""

import pytest
import redis
from click.testing import CliRunner

from imgq.settings import Settings, mask_url
from producer.cli import cli
from worker.logs import mask_secrets

# The password of every URL below holds "hunter" and "2x9": neither may survive masking.
SHAPES = [
    ("redis://:hunter2x9@host:6379/0", "redis://:***@host:6379/0"),
    ("rediss://user:hunter2x9@host/1", "rediss://user:***@host/1"),
    ("redis://:hunter%232x9@host:6379/0", "redis://:***@host:6379/0"),  # percent-encoded: well-formed
    ("redis://:hunter#2x9@host:6379/0", "redis://:***@host:6379/0"),  # raw '#': a fragment to urlsplit
    ("redis://:hunter/2x9@host:6379/0", "redis://:***@host:6379/0"),  # raw '/': a path
    ("redis://:hunter?2x9@host:6379/0", "redis://:***@host:6379/0"),  # raw '?': a query
    ("redis://u:hunter@2x9@host/0", "redis://u:***@host/0"),  # raw '@': two of them
    ("redis://:hunter:2x9@host/0", "redis://:***@host/0"),  # ':' in a password is legal
    ("redis://hunter2x9@host/0", "redis://***@host/0"),  # a password where the user name goes
    ("redis://host:6379/0?password=hunter2x9", "redis://host:6379/0?password=***"),
    ("redis://host/0?db=1&PASSWORD=hunter2x9&x=1", "redis://host/0?db=1&PASSWORD=***&x=1"),
    ("unix:///run/redis.sock?password=hunter2x9&db=2", "unix:///run/redis.sock?password=***&db=2"),
    ("redis://:hunter2x9@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
    ("redis://:hunter2x9@host:port/0", "redis://:***@host:port/0"),  # not parseable by urlsplit's port
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),  # nothing to mask
    ("not a url at all", "not a url at all"),
]


@pytest.mark.parametrize(("url", "masked"), SHAPES)
def test_mask_url_masks_every_shape(url, masked):
    assert mask_url(url) == masked
    assert "hunter" not in mask_url(url) and "2x9" not in mask_url(url)


@pytest.mark.parametrize(("url", "masked"), SHAPES)
def test_the_worker_logs_mask_every_shape(url, masked):
    text = f"Cannot connect to {url}: Connection refused."
    assert mask_secrets(text) == f"Cannot connect to {masked}: Connection refused."


MALFORMED = [
    ("redis://:hunter#2x9@host:6379/0", "holds a '#': percent-encode it in the password (%23)."),
    ("redis://:hunter/2x9@host:6379/0", "has a '/', '?' or '@' in its password: percent-encode them (%2F, %3F, %40)."),
    ("redis://:hunter?2x9@host:6379/0", "has a '/', '?' or '@' in its password: percent-encode them (%2F, %3F, %40)."),
    ("redis://u:hunter@2x9@host/0", "has a '/', '?' or '@' in its password: percent-encode them (%2F, %3F, %40)."),
    ("redis://host/0?password=hunter2x9", "has a password in its query"),
    ("redis://:hunter2x9@host:port/0", "has a port that is not a number"),
    ("redis://:hunter2x9@host/zero", "must end with a database number (/0), not '/zero'."),
    ("http://:hunter2x9@host/0", "must be a redis://, rediss:// or unix:// URL."),
    ("hunter2x9", "must be a redis://, rediss:// or unix:// URL."),
]


@pytest.mark.parametrize(("url", "message"), MALFORMED)
@pytest.mark.parametrize("name", ["broker_url", "results_url"])
def test_malformed_urls_are_refused_naming_the_variable_not_the_password(name, url, message):
    with pytest.raises(ValueError) as info:
        Settings.from_env({f"IMGQ_{name.upper()}": url})
    text = str(info.value)
    assert text.startswith(f"IMGQ_{name.upper()} (--{name.replace('_', '-')}) ") and message in text
    assert "hunter" not in text and "2x9" not in text


@pytest.mark.parametrize(("url", "message"), MALFORMED[:3])
def test_a_malformed_broker_url_is_one_cli_line_without_the_password(url, message):
    result = CliRunner().invoke(cli, ["status"], env={"IMGQ_BROKER_URL": url}, catch_exceptions=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: IMGQ_BROKER_URL (--broker-url) ") and message in lines[0]
    assert "hunter" not in result.output and "2x9" not in result.output
    result = CliRunner().invoke(cli, ["--broker-url", url, "status"], catch_exceptions=False)
    assert result.exit_code == 1 and "hunter" not in result.output


@pytest.mark.parametrize("url", ["redis://:hunter2x9@host:6379/0", "redis://:hunter%232x9%2F%3F%40@host:6379/0",
                                 "rediss://user:hunter@host:6380/3", "unix:///run/redis.sock?db=2",
                                 "redis://host", "redis://[::1]:6379/"])
def test_well_formed_urls_are_accepted_and_read_alike_by_redis_py_and_kombu(url):
    from kombu.utils.url import parse_url as kombu_parse

    assert Settings(broker_url=url, results_url=url).broker_url == url
    ours = redis.connection.parse_url(url)
    if url.startswith("redis"):
        assert kombu_parse(url)["password"] == ours.get("password")


def test_a_percent_encoded_password_reaches_redis_as_it_was():
    assert redis.connection.parse_url("redis://:hunter%232x9%2F%3F%40@host/0")["password"] == "hunter#2x9/?@"
