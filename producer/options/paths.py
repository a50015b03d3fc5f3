"""The ``-o FILE`` options of the commands: checked before any work starts, refused in one line."""

from __future__ import annotations

import os

import click


class OutputFile(click.Path):
    """A file to write: not a folder (click.Path), in a folder that exists and can be written.

    A missing folder is refused when the options are read, before a job is classified or a report is
    drawn, with one line (a ClickException, not a usage error: the command was typed right).
    """

    def __init__(self):
        super().__init__(dir_okay=False, writable=True)

    def convert(self, value, param, ctx):
        path = super().convert(value, param, ctx)
        name = os.fsdecode(path)
        folder = os.path.dirname(os.path.abspath(name))
        if not os.path.isdir(folder):
            raise click.ClickException(f"Cannot write {name}: the folder {folder} does not exist.")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise click.ClickException(f"Cannot write {name}: the folder {folder} is not writable.")
        return path
