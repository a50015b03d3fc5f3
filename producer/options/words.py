"""How the CLI says counts: "1 batch", "3 batches" (rates are None over too short a span: imgq.results.job)."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """``n`` and ``word``, in the plural unless n is 1: "1 batch", "0 batches", "2 images" (``many``: an
    irregular plural)."""
    if n == 1:
        return f"{n} {word}"
    return f"{n} {many or (word + 'es' if word.endswith(('ch', 'sh', 's', 'x')) else word + 's')}"
