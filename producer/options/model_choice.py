"""`--model NAME|FOLDER` on the producer's side: which model a job asks for.

A job carries a model's *name* only: it routes the job's batches to the queue of that model's workers
(imgq.celery_config.queue_name), and is never a path a worker opens (a worker loads only the model its operator
set). So the producer accepts:

- a built-in name (imgq.models.spec.BUILTIN: resnet50, efficientnetv2b0, ...);
- a model folder on this machine: its name (the folder's, or its manifest's) is read here, with what the
  producer needs of it (its feature layer), and only the name is sent;
- the name of a user's model that a live worker serves (its heartbeat says so).

Anything else is refused with the closest names, before anything is walked or queued: a typo would otherwise
queue a job that no worker will ever take.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click

from imgq.models.spec import ModelSpec
from imgq.models.weights import FILE, WeightsSettingError, check_weights, parse_weights
from imgq.results.job import JobStatus
from imgq.results.store import ResultStore
from imgq.settings import env_var

if TYPE_CHECKING:
    from imgq.models.spec import ModelSpec


class UnknownModel(click.ClickException):
    """A --model value that names no model: one line, exit code 2 (a usage error)."""

    exit_code = 2


@dataclass(frozen=True)
class ChosenModel:
    """The model a job asks for: ``name`` routes it; ``feature_layer`` (empty when not known here) is the
    pooled layer before its classifier, which `imgq results --embeddings` reads; ``spec``: the model as read
    here (a built-in, or a folder on this machine)."""

    name: str
    feature_layer: str = ""
    spec: ModelSpec | None = field(default=None, compare=False)
    # The model as this machine knows it (a built-in, or a folder here); None for a model named by a live worker.

    def params(self) -> dict:
        """What the job's record keeps of it (imgq.jobs.submit.submit's ``params``)."""
        return {"feature_layer": self.feature_layer} if self.feature_layer else {}


def choose_model(value: str, store: ResultStore | None = None) -> ChosenModel:
    """The model ``value`` names (a built-in name, a folder here, or a model a live worker serves, looked up
    in ``store`` when given). Raises UnknownModel."""
    from imgq.models.resolve import resolve
    from imgq.models.spec import BUILTIN, ModelError

    # As imgq.models.resolve tells them apart: a path (a separator, a leading '.') or an existing folder.
    if value in BUILTIN or os.sep in value or value.startswith(".") or os.path.isdir(value):
        try:
            spec = resolve(value)
        except ModelError as exc:
            raise UnknownModel(str(exc)) from None
        return ChosenModel(spec.name, spec.feature_layer or "", spec)
    served = {w.model for w in store.workers()} if store is not None else set()
    if value in served:
        return ChosenModel(value)
    raise UnknownModel(unknown_model_message(value, sorted(BUILTIN), sorted(served)))


class WeightsOption(click.ParamType):
    """``--weights``: imagenet, random[:SEED] or a weights file, read as IMGQ_WEIGHTS is (imgq/models/weights.py);
    anything else refused in one line, exit 2."""

    name = "WEIGHTS"

    def convert(self, value, param, ctx):
        try:
            parse_weights(value)
        except WeightsSettingError as exc:
            self.fail(str(exc), param, ctx)
        return value


def check_local_weights(chosen: ChosenModel, weights: str, option: bool) -> None:
    """Refuse, in one line, weights a worker started here could not load with ``chosen``: random weights for a
    model folder (imgq.models.weights.check_weights), a weights file that is not on this machine. ``option``:
    given as --weights (a usage error, exit 2); else read from IMGQ_WEIGHTS (exit 1: the environment to fix)."""
    try:
        read = check_weights(chosen.spec, weights) if chosen.spec is not None else parse_weights(weights)
        problem = (f"{read.path}: no such file; give the weights file of the worker started here."
                   if read.kind == FILE and not os.path.isfile(read.path) else None)
    except WeightsSettingError as exc:
        problem = str(exc)
    if problem is None:
        return
    if option:
        raise click.BadParameter(problem, param_hint="'--weights'")
    raise click.ClickException(f"{env_var('weights')}: {problem}")


def unknown_model_message(value: str, builtin: list[str], served: list[str]) -> str:
    """One line: ``value`` is no model, with the closest names among the built-in and the served ones."""
    close = difflib.get_close_matches(value.lower(), [*builtin, *served], n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else f" Built-in: {', '.join(builtin)}."
    where = f", nor served by a live worker (they serve {', '.join(served)})" if served else ""
    return (f"No model {value!r}: not a built-in name, nor a model folder here{where}.{hint} For a model of your "
            f"own, give its folder, or start its worker (`imgq worker --model FOLDER`) first.")


def feature_layer(status: JobStatus) -> str:
    """The feature layer of a job's model: as its record keeps it (read from the folder at submission), else
    the built-in model's, else the one layer the job dumped. Raises click.ClickException when none says."""
    from imgq.models.spec import BUILTIN

    builtin = BUILTIN.get(status.model)
    known = status.params.get("feature_layer") or (builtin.feature_layer if builtin else "")
    dumped = status.params.get("activations") or []
    if known or len(dumped) == 1:
        return str(known or dumped[0])
    raise click.ClickException(f"The feature layer of model {status.model} is not known here (it was submitted by "
                               f"name): submit with --model FOLDER, or dump only that layer.")
