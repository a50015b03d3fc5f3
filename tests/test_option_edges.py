"""Every numeric and duration option of every command, at its edges: 0, negative, nan, inf and huge values
are refused in one line on stderr with exit code 2 (never a traceback), or accepted when they are in the
option's range, and then 0 is documented in its help.

The options are walked from the click group, as the --help test walks the commands, and classified by their
click type, so an option added later is checked without being listed here. A numeric option must have a
type with both bounds (producer/options/params.py).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import click
import pytest

from producer.cli import cli
from producer.options.params import Duration
from tests.processes import free_port, imgq_cli
from tests.test_cli import command_paths

EDGES = ("0", "-1", "-5", "nan", "inf", "-inf", "1e400", "99999999999999999999", "9" * 5000)
DURATION_EDGES = (*EDGES, "0s", "-5s", "99999999999999999999d", "1000000000d", "nand", "infd", "1.5h", "7w")
NUMERIC = (click.types.IntParamType, click.types.FloatParamType, Duration)
UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def commands() -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for path in command_paths(cli):
        command: click.Command = cli
        for name in path:
            assert isinstance(command, click.Group)
            command = command.commands[name]
        if not isinstance(command, click.Group):
            found.append((path, command))
    return found


def numeric_params() -> list[tuple[tuple[str, ...], click.Command, click.Parameter]]:
    return [(path, command, param) for path, command in commands() for param in command.params
            if isinstance(param.type, NUMERIC)]


def bounds(param: click.Parameter) -> tuple[float | None, float | None, bool]:
    """(low, high, low_open) as the type declares them."""
    t = param.type
    if isinstance(t, Duration):
        return t.low, t.high, False
    return getattr(t, "min", None), getattr(t, "max", None), getattr(t, "min_open", False)


def expected(param: click.Parameter, text: str) -> float | None:
    """The value ``text`` stands for when the option must accept it, else None: worked out here, from the
    type's declared bounds, independently of the type's own checks."""
    low, high, low_open = bounds(param)
    if isinstance(param.type, Duration):
        match = re.fullmatch(r"([0-9]+)([smhd]?)", text)
        value: float | None = int(match[1]) * UNIT[match[2]] if match and len(match[1]) < 30 else None
    elif isinstance(param.type, click.types.IntParamType):
        value = int(text) if re.fullmatch(r"-?[0-9]{1,30}", text) else None
    else:
        try:
            value = float(text) if len(text) < 30 else None
        except ValueError:
            value = None
    if value is None or not math.isfinite(value) or low is None or high is None:
        return None
    above_low = value > low if low_open else value >= low
    return value if above_low and value <= high else None


def value_for(param: click.Parameter, tmp_path) -> str:
    """A value of ``param`` that parses: a folder that exists for a path (a new file in it for a file)."""
    if isinstance(param.type, click.Path):
        return str(tmp_path if param.type.dir_okay else tmp_path / "out")
    if isinstance(param.type, NUMERIC):
        return str(bounds(param)[0])
    return "x"


def command_line(command: click.Command, param: click.Parameter, value: str, tmp_path) -> list[str]:
    """``value`` for ``param`` first (click reads the options given in their order), then what else the
    command requires, and the optional arguments that come before ``param`` (`imgq similar [JOB] [IMAGE]`)."""
    required = [p for p in command.params if p.required and p is not param]
    options = [part for p in required if isinstance(p, click.Option) for part in (p.opts[0], value_for(p, tmp_path))]
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    last = arguments.index(param) if param in arguments else -1  # optional arguments before it are given too
    positional = [value if p is param else value_for(p, tmp_path)
                  for number, p in enumerate(arguments) if p.required or number <= last]
    if isinstance(param, click.Option):
        return [param.opts[0], value, *options, "--", *positional]
    return [*options, "--", *positional]


CASES = [pytest.param(path, param.name, value, id=f"{' '.join(path)} {param.name} {value[:24]}")
         for path, _, param in numeric_params()
         for value in (DURATION_EDGES if isinstance(param.type, Duration) else EDGES)]


def find(path: tuple[str, ...], name: str) -> tuple[click.Command, click.Parameter]:
    for p, command, param in numeric_params():
        if p == path and param.name == name:
            return command, param
    raise AssertionError(f"{path} {name}")


def test_the_walk_finds_the_numeric_options():
    found = {(" ".join(path), param.name) for path, _, param in numeric_params()}
    assert {("status", "limit"), ("wait", "timeout"), ("results", "min_score"), ("submit", "retention"),
            ("schedule add", "every"), ("show", "image"), ("worker", "metrics_port")} <= found


@pytest.mark.parametrize(("path", "name"), sorted({(path, param.name) for path, _, param in numeric_params()}))
def test_every_numeric_option_has_both_bounds(path, name):
    low, high, _ = bounds(find(path, name)[1])
    assert low is not None and high is not None and math.isfinite(low) and math.isfinite(high), (
        f"imgq {' '.join(path)} {name}: give it a type with both bounds from producer/options/params.py")


@pytest.mark.parametrize(("path", "name", "value"), CASES)
def test_numeric_option_at_its_edges(path, name, value, tmp_path, settings):
    command, param = find(path, name)
    args = command_line(command, param, value, tmp_path)
    want = expected(param, value)
    if want is None:
        # Refused while the options are read: nothing runs, so the whole CLI is run (against a port where no
        # Redis answers: were anything to run, it could not reach a server).
        result = imgq_cli(settings, *path, *args, check=False,
                          env={"IMGQ_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"})
        lines = result.stderr.splitlines()
        assert result.exit_code == 2, result.output
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, lines
        assert (param.opts[0] if isinstance(param, click.Option) else param.human_readable_name) in lines[0]
        return
    # Accepted: only parsed (running `imgq worker` would start a worker), to the value the option stands for.
    context = command.make_context(" ".join(path), list(args))
    got = context.params[param.name]
    assert got == want and math.isfinite(got)
    if want == 0 and isinstance(param, click.Option) and not isinstance(param.type, click.types.FloatParamType):
        # 0 of a count or a duration is a special case (off, none, all, for ever): the help says which.
        assert re.search(r"\b0[:)]|\(0\b|0: ", param.help or ""), f"{param.opts[0]}: say what 0 means in its help"


@pytest.mark.parametrize(("variable", "value"), [("IMGQ_TOP_K", "0"), ("IMGQ_BATCH_SIZE", "nan"),
                                                  ("IMGQ_RETENTION", "99999999999999999999d"),
                                                  ("IMGQ_RETENTION", "-1"), ("IMGQ_NAMESPACE", "a:b")])
@pytest.mark.parametrize("command", [("status",), ("submit", "."), ("schedule", "list")])
def test_a_bad_setting_in_the_environment_is_one_line_and_exit_1(settings, variable, value, command):
    """What docs/cli.md says: a bad IMGQ_* value is exit 1 (the environment to fix), not 2 (the command line)."""
    result = imgq_cli(settings, *command, check=False, env={variable: value})
    assert result.exit_code == 1 and result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"Error: {variable}") and "Traceback" not in result.output


def test_the_exit_codes_are_documented_as_they_are():
    intro = " ".join((Path(__file__).parents[1] / "docs" / "cli.md").read_text().split())
    assert "**2**, the command line is wrong" in intro and "and a bad `IMGQ_*` value" in intro.split("**1**")[1]


@pytest.mark.parametrize("group", [(), ("schedule",)], ids=["imgq", "imgq schedule"])
def test_a_group_alone_still_shows_its_help(settings, group):
    result = imgq_cli(settings, *group, check=False)
    assert "Usage: cli" in result.output and "Commands:" in result.output and "Error" not in result.output
