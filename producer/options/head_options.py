"""`--head HEAD` on submit, classify and schedule add: the head read and checked before anything is queued."""

from __future__ import annotations

import click

from imgq.contract import MODEL_NAME
from imgq.labels.heads import Head, HeadError, read_head, refusal
from imgq.results.store import ResultStore


def head_file(ctx, param, value: str | None) -> Head | None:
    """Click callback: ``--head`` read and checked at parse time (one line for a file that is not a head)."""
    if value is None:
        return None
    try:
        return read_head(value)
    except HeadError as exc:
        raise click.BadParameter(str(exc)) from None


def refuse_foreign_head(head: Head | None, store: ResultStore, model: str = MODEL_NAME, weights: str = "") -> None:
    """A head learned on another model, or on weights no live worker that takes the job (of the model, with the
    ``weights`` it asks for) runs, stops the submission."""
    if head is None:
        return
    problem = refusal(head, model, {w.weights for w in store.serving(model, weights)})
    if problem:
        raise click.ClickException(problem)


def head_option(help_text: str):
    return click.option("--head", type=click.Path(dir_okay=False, path_type=str), callback=head_file,
                        metavar="HEAD", help=help_text)
