"""What a walk left out, told to the user by `imgq submit` and `imgq classify` (imgq.storage.walk.Skipped)."""

from __future__ import annotations

from imgq.storage.selection import Skipped
from producer.options.words import echo


def echo_queued(line: str, skipped: Skipped | None) -> None:
    """Print ``line`` (ending with '.') on standard error with what the walk skipped added to it
    ("Queued 8 images in 1 batch; skipped 2 files that are not images (1 .MOV, 1 .txt)."), after one line per
    skipped file when they were kept (``--verbose``). Standard output carries only the job id.
    """
    if skipped is None:
        echo(line, err=True)
        return
    for path in skipped.paths:
        echo(f"skipped: {path}", err=True)
    for path in skipped.link_paths:
        echo(f"not followed (symlinked folder): {path}", err=True)
    summary = skipped.summary()
    echo(f"{line[:-1]}; {summary}." if summary else line, err=True)
