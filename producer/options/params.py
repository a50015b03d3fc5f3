"""The types of the CLI's numeric and duration options, in one place: every number a user types is checked at
the edge (0, negative, nan, inf, huge) by one of these, and refused in one line with exit code 2.

- ``BoundedInt(low, high)``: a whole number from low to high (click's IntRange, both bounds required);
- ``FiniteFloat(low, high)``: a finite number from low to high (click's FloatRange lets nan through: every
  comparison with nan is false, so ``nan`` was "in" every range);
- ``Duration(low, high)``: seconds, or 90s, 15m, 12h, 7d, from low to high seconds.

tests/test_cli.py walks every option of every command through 0, negative, nan, inf and huge values and
fails for a numeric option whose type has no upper bound: a new option takes one of these types.
"""

from __future__ import annotations

import math
import os

import click

from imgq.settings import env_var, format_seconds, parse_duration, url_file_var


class BoundedInt(click.IntRange):
    """A whole number from ``low`` to ``high``, both included."""

    def __init__(self, low: int, high: int):
        super().__init__(low, high)


class FiniteFloat(click.FloatRange):
    """A finite number from ``low`` to ``high`` (``low_open``: more than ``low``); nan and inf are refused."""

    def __init__(self, low: float, high: float, *, low_open: bool = False):
        super().__init__(low, high, min_open=low_open)

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)  # the range refuses inf; nan compares false, so passes
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a number.", param, ctx)
        return number


class Duration(click.ParamType):
    """Seconds, or 90s, 15m, 12h, 7d, from ``low`` to ``high`` seconds; converted to whole seconds."""

    name = "DURATION"

    def __init__(self, low: int, high: int):
        self.low, self.high = low, high

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            seconds = value
        else:
            try:
                seconds = parse_duration(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if not self.low <= seconds <= self.high:
            self.fail(f"{value!r} is not from {format_seconds(self.low)} to {format_seconds(self.high)}.", param, ctx)
        return seconds


def embedded_asked(ctx: click.Context, option: bool | None) -> bool | None:
    """A starter's --embedded-redis/--no-embedded-redis, or the group's --embedded-redis when not given."""
    return option if option is not None else (True if ctx.find_root().params.get("embedded_redis") else None)


def broker_configured(ctx: click.Context) -> bool:
    """True when the user named a broker (--broker-url, IMGQ_BROKER_URL or IMGQ_BROKER_URL_FILE): else a starter
    uses whatever Redis answers at the default address, or its embedded one, and says which in its first line."""
    named = any(os.environ.get(name) for name in (env_var("broker_url"), url_file_var("broker_url")))
    return bool(named or ctx.find_root().params.get("broker_url"))
