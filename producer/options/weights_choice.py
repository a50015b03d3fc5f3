"""`--weights` of submit, classify and schedule add: which weights a job asks for, named before anything is queued.

A job asking for weights goes only to the workers of its model with those weights (imgq/models/weights.py names
them the same way on both sides; the producer hashes a weights file, it never loads one). Asking for none leaves
the job to any worker of its model, as before jobs named their weights.
"""

from __future__ import annotations

import click

from imgq.models.weights import WeightsRequestError, weights_key
from producer.options.model_choice import ChosenModel


def asked_weights(value: str, model: ChosenModel) -> str:
    """The key of the weights ``value`` asks for (IMGQ_WEIGHTS' forms) for ``model``; "" for "". Raises
    click.BadParameter: one line, exit code 2, nothing queued."""
    if not value:
        return ""
    if model.spec is None and (value == "imagenet" or value.startswith("random")):
        # Known here by name only, from a live worker: a user's model, whose own weights have no name here.
        raise click.BadParameter(f"Model {model.name} is known here only by name (a live worker serves it): give its "
                                 f"folder (--model FOLDER) to ask for its own weights, or a weights file.",
                                 param_hint="'--weights'")
    try:
        return weights_key(value, model.spec)
    except WeightsRequestError as exc:
        raise click.BadParameter(str(exc), param_hint="'--weights'") from None


def classify_weights(value: str, model: ChosenModel) -> str | None:
    """The key of the weights a job of `imgq classify` (or `imgq learn`) asks for: those of the worker it would
    start. None when they cannot be named here (a missing file, random weights for a model folder): that worker,
    started first, then says why in its own words, before anything is queued (producer/local/watch.py)."""
    try:
        return asked_weights(value, model)
    except click.BadParameter:
        return None
