"""How the CLI says things: counts ("1 batch", "3 batches"; rates are None over too short a span:
imgq.results.job), and the lines that hold names imgq did not choose, said without control characters."""

from __future__ import annotations

import click

from imgq.text import printable


def plural(n: int, word: str, many: str | None = None) -> str:
    """``n`` and ``word``, in the plural unless n is 1: "1 batch", "0 batches", "2 images" (``many``: an
    irregular plural)."""
    if n == 1:
        return f"{n} {word}"
    return f"{n} {many or (word + 'es' if word.endswith(('ch', 'sh', 's', 'x')) else word + 's')}"


def echo(message: object = "", err: bool = False) -> None:
    """``click.echo`` of ``message`` made printable (imgq/text.py): every line for a person's terminal that may
    hold a path, a label or a name. Never for a machine format (JSONL, CSV, --json): data is written exactly."""
    click.echo(printable(message), err=err)
