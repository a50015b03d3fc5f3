"""IMGQ_BROKER_URL_FILE and IMGQ_RESULTS_URL_FILE: the Redis URLs (and so their passwords) read from files, such
as the Compose secrets of docker-compose.yml, instead of the environment, where `docker inspect` and
/proc/PID/environ would show them. tests/test_compose.py checks the same in containers."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgq.settings import MAX_URL_FILE_BYTES, Settings
from producer.cli import cli
from tests.processes import clean_env

IMGQ = str(Path(sys.executable).parent / "imgq")


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_urls_come_from_files_whose_final_newline_is_dropped(tmp_path):
    broker = write(tmp_path / "broker_url", "redis://:s3cret@redis:6379/0\n")
    results = write(tmp_path / "results_url", "  rediss://:other@store:6380/2  \n")
    settings = Settings.from_env({"IMGQ_BROKER_URL_FILE": broker, "IMGQ_RESULTS_URL_FILE": results})
    assert settings.broker_url == "redis://:s3cret@redis:6379/0"
    assert settings.effective_results_url == "rediss://:other@store:6380/2"
    # An empty variable counts as unset, as for every setting; the CLI's --broker-url still wins.
    assert Settings.from_env({"IMGQ_BROKER_URL_FILE": ""}).broker_url == Settings().broker_url
    assert Settings.from_env({"IMGQ_BROKER_URL_FILE": broker}, broker_url="redis://h:1/0").broker_url == "redis://h:1/0"


def test_a_url_read_from_a_file_travels_to_a_child_as_the_file_name(tmp_path):
    """`imgq worker` and `imgq classify` hand their settings to the worker process in its environment
    (Settings.as_env): the file's name goes there, not the URL read from it."""
    broker = write(tmp_path / "broker_url", "redis://:s3cret@redis:6379/0\n")
    settings = Settings.from_env({"IMGQ_BROKER_URL_FILE": broker, "IMGQ_BATCH_SIZE": "3"})
    env = settings.as_env()
    assert (env["IMGQ_BROKER_URL"], env["IMGQ_BROKER_URL_FILE"]) == ("", broker)
    assert "s3cret" not in json.dumps(env)
    assert Settings.from_env(env) == settings
    # A URL given another way (--broker-url, or changed since) travels as it is, and the file is dropped.
    for changed in (Settings.from_env({"IMGQ_BROKER_URL_FILE": broker}, broker_url="redis://:pw@h:1/0"),
                    dataclasses.replace(settings, broker_url="redis://:pw@h:1/0")):
        env = changed.as_env()
        assert (env["IMGQ_BROKER_URL"], env["IMGQ_BROKER_URL_FILE"]) == ("redis://:pw@h:1/0", "")
        assert Settings.from_env(env).broker_url == "redis://:pw@h:1/0"


def test_a_link_to_the_file_is_followed(tmp_path):
    """Kubernetes mounts each secret as a link into a timestamped folder."""
    target = write(tmp_path / "real", "redis://:pw@h:1/0")
    (tmp_path / "link").symlink_to(target)
    assert Settings.from_env({"IMGQ_BROKER_URL_FILE": str(tmp_path / "link")}).broker_url == "redis://:pw@h:1/0"


def test_both_the_url_and_its_file_is_an_error(tmp_path):
    broker = write(tmp_path / "broker_url", "redis://:pw@h:1/0")
    with pytest.raises(ValueError, match="Set IMGQ_RESULTS_URL or IMGQ_RESULTS_URL_FILE, not both"):
        Settings.from_env({"IMGQ_RESULTS_URL": "redis://h:1/0", "IMGQ_RESULTS_URL_FILE": broker})


@pytest.mark.parametrize("case", ["missing", "folder", "fifo", "empty", "blank", "two lines", "huge", "binary",
                                  "not a url", "unreadable"])
def test_a_bad_file_is_one_message_naming_the_variable_never_the_content(tmp_path, case):
    path = tmp_path / "broker_url"
    secret = "hunter2hunter2"
    if case == "folder":
        path.mkdir()
    elif case == "fifo":
        os.mkfifo(path)  # opened without blocking: refused at once, not waited on
    elif case == "empty":
        path.write_text("")
    elif case == "blank":
        path.write_text(" \n\n")
    elif case == "two lines":
        path.write_text(f"redis://:{secret}@h:1/0\nredis://:{secret}@h:2/0\n")
    elif case == "huge":
        path.write_text(f"redis://:{secret}@h:1/0" + " " * MAX_URL_FILE_BYTES)
    elif case == "binary":
        path.write_bytes(secret.encode() + b"\xff\xfe")
    elif case == "not a url":
        path.write_text(f"{secret}\n")  # the password alone, where the URL should be
    elif case == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads a file whatever its mode")
        path.write_text(f"redis://:{secret}@h:1/0")
        path.chmod(0)
    with pytest.raises(ValueError) as info:
        Settings.from_env({"IMGQ_BROKER_URL_FILE": str(path)})
    message = str(info.value)
    assert "IMGQ_BROKER_URL" in message and secret not in message and "\n" not in message


def test_the_cli_reads_the_broker_url_from_its_file(tmp_path, settings):
    url_file = write(tmp_path / "broker_url", settings.broker_url + "\n")
    env = {"IMGQ_BROKER_URL": "", "IMGQ_BROKER_URL_FILE": url_file, "IMGQ_NAMESPACE": settings.namespace}
    result = CliRunner().invoke(cli, ["status", "--workers", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert '"workers": []' in result.output


def test_the_cli_stops_with_one_line_when_the_file_is_missing(tmp_path):
    env = clean_env(IMGQ_BROKER_URL_FILE=str(tmp_path / "nowhere"))
    done = subprocess.run([IMGQ, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"Error: IMGQ_BROKER_URL_FILE ({tmp_path / 'nowhere'}): cannot "
                                                "open: No such file or directory."]


@pytest.mark.parametrize(("name", "url"), [
    ("broker_url", "http://:hunter2hunter2@h:1/0"),  # not a Redis scheme
    ("broker_url", "redis://:hunter2#hunter2@h:1/0"),  # a raw '#' in the password
    ("results_url", "redis://h:port/0"),  # a port that is not a number
    ("results_url", "redis://h:1/zero"),  # no database number
])
def test_a_bad_url_read_from_a_file_names_the_file_and_its_variable(tmp_path, name, url):
    """The URL came from IMGQ_<NAME>_FILE: the message names that variable and the file, not IMGQ_<NAME> or the
    --option, which the user did not set (issue 25 item 17a)."""
    variable = f"IMGQ_{name.upper()}"
    path = write(tmp_path / name, url + "\n")
    with pytest.raises(ValueError) as info:
        Settings.from_env({f"{variable}_FILE": path})
    message = str(info.value)
    assert message.startswith(f"{variable}_FILE ({path}) ") and "hunter2" not in message
    assert f"{variable} (" not in message and "--" not in message
    # The same URL given in the variable itself is still worded after the variable and its option.
    with pytest.raises(ValueError, match=f"^{variable} \\(--{name.replace('_', '-')}\\) "):
        Settings.from_env({variable: url})


def test_the_cli_names_the_url_file_of_a_bad_url_in_one_line(tmp_path):
    url_file = write(tmp_path / "broker_url", "http://h:1/0\n")
    env = {"IMGQ_BROKER_URL": "", "IMGQ_RESULTS_URL": "", "IMGQ_BROKER_URL_FILE": url_file}
    result = CliRunner().invoke(cli, ["status"], env=env)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"Error: IMGQ_BROKER_URL_FILE ({url_file}) must be a redis://, rediss:// or unix:// URL."]
