"""Jobs as a user names them (imgq/jobs/refs.py): an id, an unambiguous start of one, a name; and an expired
job, which says it expired. Every command with a JOB argument is walked from the click group."""

from __future__ import annotations

import click
import pytest

from imgq.contract import ok_record
from producer.cli import cli
from tests.jobs import commit_job
from tests.processes import imgq_cli
from tests.test_cli import command_paths

TRAINED = "file:test.weights.h5:sha256:" + "ab" * 32
TOO_SHORT = ("{!r} is too short to stand for a job id: give at least 4 characters of the id, the whole id or the "
             "job's name.")


@pytest.fixture
def run(settings):
    return lambda *args: imgq_cli(settings, *args, check=False)


def job_commands() -> list[tuple[str, ...]]:
    """Every command taking a JOB argument, found by walking the CLI (a new one is covered without a list)."""
    found = []
    for path in command_paths(cli):
        command: click.Command = cli
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        if any(isinstance(p, click.Argument) and p.name == "job" for p in command.params):
            found.append(path)
    return found


def extra_args(path: tuple[str, ...], tmp_path) -> list[str]:
    """What else the command needs to get as far as looking the job up."""
    return {("show",): ["0", "--layer", "avg_pool", "-o", str(tmp_path / "x.png")],
            ("report",): ["-o", str(tmp_path / "r.html")], ("wait",): ["--timeout", "1"],
            ("tag",): ["--dry-run"], ("similar",): ["0"]}.get(path, [])


def job(store, job_id: str, name: str = "") -> str:
    commit_job(store, job_id, ["/p/0.jpg"], name=name)
    store.record_results(job_id, [ok_record(job_id, 0, "/p/0.jpg", [], weights=TRAINED)])
    return job_id


def expire(store, job_id: str) -> None:
    """What Redis does when a finished job's retention passes: its keys go, its id stays in the job list."""
    store.redis.delete(*(key for key in store._job_keys(job_id) if key != store.keys.active))


def test_the_walk_finds_every_job_command():
    assert {("status",), ("wait",), ("results",), ("cancel",), ("delete",), ("requeue",), ("report",), ("show",),
            ("tag",)} <= set(job_commands())


def test_status_by_name_and_by_the_start_of_an_id(run, store):
    job(store, "a1b2c3d4e5f6", name="uploads")
    job(store, "ffff00001111", name="holiday")
    assert run("status", "uploads", "--json").stdout.count('"id": "a1b2c3d4e5f6"') == 1
    assert '"id": "ffff00001111"' in run("status", "ffff", "--json").stdout
    short = run("status", "fff")  # under 4 characters, as git: not a prefix, and it says so (issue 25 item 17f)
    assert short.exit_code == 1 and short.stderr == f"Error: {TOO_SHORT.format('fff')}\n"


def test_an_ambiguous_name_or_prefix_is_one_line_listing_the_candidates(run, store):
    job(store, "abcd11111111", name="uploads")
    job(store, "abcd22222222", name="uploads")
    for text, what in (("uploads", "are named"), ("abcd", "have ids starting")):
        result = run("results", text)
        assert result.exit_code == 1 and result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"Error: 2 jobs {what} '{text}': abcd22222222 (")  # newest first
        assert "abcd11111111 (" in line and line.endswith("Give one id.")
    assert "abcd1111" in run("status", "abcd1", "--json").stdout  # longer: unambiguous


@pytest.mark.parametrize("path", job_commands(), ids=" ".join)
def test_every_job_command_resolves_a_name_and_says_a_job_expired(run, store, path, tmp_path):
    job(store, "e1e1e1e1e1e1", name="nightly")
    found = run(*path, "nightly", *extra_args(path, tmp_path))
    assert "No job" not in found.output and "Traceback" not in found.output, found.output
    if path == ("delete",):  # it did
        job(store, "e1e1e1e1e1e1", name="nightly")
    expire(store, "e1e1e1e1e1e1")
    for text in ("e1e1e1e1e1e1", "e1e1"):
        gone = run(*path, text, *extra_args(path, tmp_path))
        assert gone.exit_code == 1 and gone.stderr.splitlines() == [
            "Error: Job 'e1e1e1e1e1e1' has expired: a finished job is kept for its retention (--retention, "
            "IMGQ_RETENTION) and then forgotten with its records."]


def test_an_expired_job_is_remembered_after_the_job_list_forgets_it(run, store):
    job(store, "e2e2e2e2e2e2")
    expire(store, "e2e2e2e2e2e2")
    assert store.forget_expired() == 1 and store.redis.zscore(store.keys.jobs, "e2e2e2e2e2e2") is None
    assert "has expired" in run("status", "e2e2e2e2e2e2").stderr
    assert run("status", "nosuchjob").stderr == "Error: No job 'nosuchjob' in the results store.\n"


def test_a_start_of_an_id_under_4_characters_asks_for_at_least_4(run, store):
    """Under MIN_PREFIX characters the start of an id stands for no job (it would match most of a busy store's):
    the user is told to give at least 4 characters, whether it starts one id, several or an expired one's; a text
    starting no id is no job (issue 25 item 17f)."""
    job(store, "abc111111111", name="uploads")
    job(store, "abc222222222")
    job(store, "e3e3e3e3e3e3")
    expire(store, "e3e3e3e3e3e3")
    for text in ("a", "abc", "e3e"):
        short = run("results", text)
        assert (short.exit_code, short.stdout, short.stderr) == (1, "", f"Error: {TOO_SHORT.format(text)}\n")
    assert run("status", "zz").stderr == "Error: No job 'zz' in the results store.\n"
    assert '"id": "abc111111111"' in run("status", "abc1", "--json").stdout  # 4 characters: a prefix
