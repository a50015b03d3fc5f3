"""The paths the commands take: ``-o FILE`` options, checked before any work starts and refused in one line; the
images' PATH arguments (a path that exists, or an object-storage URL)."""

from __future__ import annotations

import os

import click

from imgq.storage.locate import is_path


class ImageLocation(click.Path):
    """An image or a folder of images: a path that exists (click.Path's check), or a URL another byte source
    serves (``s3://bucket/prefix``), passed as it is: its source lists it, and says in one line when it cannot
    (no such bucket, refused credentials: imgq.storage.errors.ListingError)."""

    def __init__(self):
        super().__init__(exists=True, path_type=str)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not is_path(value):
            return value
        return super().convert(value, param, ctx)


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
