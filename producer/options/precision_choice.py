"""`--precision` of submit and schedule add: which precision a job's forward passes must run in.

A job asking for fp32, bf16 or int8 goes only to the workers serving jobs at it (imgq.contract.Heartbeat
.job_precision; an INT8 worker still calibrating on its first images takes int8 jobs and classifies their first
images in fp32, which their records and `imgq status` say: docs/runtime.md, "INT8"). ``any``, the default, leaves
the job to any worker of its model, as before jobs named their precision.
"""

from __future__ import annotations

import click

JOB_PRECISIONS = ("any", "fp32", "bf16", "int8")
ANY = "any"

OTHER_PRECISION_WHY = ("an INT8 worker classifies the first images it is sent in fp32 while it calibrates on them, "
                       "and all of them once it refused INT8")
# Why a job that asked for a precision has records of another: `imgq status JOB` and classify's summary say it.


def precision_choice() -> click.Choice:
    """The values of `--precision` for a job (an unknown one: click's one line, exit code 2)."""
    return click.Choice(JOB_PRECISIONS)


def asked_precision(value: str | None) -> str:
    """What a job asks for, as the contract names it: "" for any (or nothing), else the precision."""
    return "" if not value or value == ANY else value


def refuse_int8_dumps(precision: str, activations: tuple[str, ...] | list[str]) -> None:
    """An INT8 model returns the classification and the pooled features only: a pass that dumps other layers
    runs fp32 (worker/runtimes/int8.py), so a job asking for int8 cannot dump activations. Raises
    click.BadParameter."""
    if precision == "int8" and activations:
        raise click.BadParameter("INT8 workers dump activations from an fp32 pass: a job asking for int8 cannot "
                                 "dump them (ask --precision fp32 or any with --activations).",
                                 param_hint="'--precision'")
