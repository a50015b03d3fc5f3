"""Duplicates in three tiers, each resting on what can carry it:

- ``identical``: the same content hash (the file's bytes);
- ``same picture``: perceptual-hash distance at most the calibrated threshold (re-encoded, resized, cropped a
  little, turned by EXIF), confirmed by the embedding's cosine when the weights are trained;
- ``same moment``: embeddings close (cosine at least a threshold) but not the same picture; only with trained
  weights (random weights' pooled features tell nothing of the kind: docs/duplicates.md).

Groups are the connected components of each tier's pairs, looser tiers joining the groups of stricter ones. A
member's tier is its tie to the group's keeper (the largest file): the strictest tier at which the two are in
one component; the keeper's own line gives the loosest tier the group needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from imgq.alike.pairs import cosine_pairs, hash_pairs

TIERS = ("identical", "same_picture", "same_moment")  # as written in jsonl and csv; shown with spaces


@dataclass(frozen=True)
class Rules:
    """``hash_bits``: the largest pHash distance of a same picture; ``confirm``: the least cosine that confirms
    one (None: no confirmation, random weights); ``moment``: the least cosine of a same moment (None: tier off)."""

    hash_bits: int
    confirm: float | None
    moment: float | None


class _Union:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def components(n: int, pairs) -> list[int]:
    """The component (its smallest row) of each of ``n`` rows, joined by ``pairs`` ((i, j, ...) tuples)."""
    union = _Union(n)
    for i, j, *_ in pairs:
        union.join(i, j)
    return [union.find(i) for i in range(n)]


def identical_pairs(content: np.ndarray):
    """``(i, j)`` chaining the rows of equal content hashes (16 zero bytes: unknown, never equal)."""
    first: dict[bytes, int] = {}
    for row, digest in enumerate(content):
        key = bytes(digest)
        if not any(key):
            continue
        if key in first:
            yield first[key], row
        else:
            first[key] = row


def group(content: np.ndarray, hashes: np.ndarray, embedding: np.ndarray, rules: Rules,
          close: Callable[[np.ndarray, float], Iterable[tuple[int, int, float]]] = cosine_pairs) -> list[list[int]]:
    """The component of each row (its smallest row) at each tier, strictest first: ``levels[0]`` joins
    identical files, ``levels[1]`` adds same pictures, ``levels[2]`` same moments. A group is a component of
    ``levels[2]`` of two rows or more. ``close(embedding, above)``: the pairs of rows whose cosine is at least
    ``above`` (exact search by default; an index's for the largest collections)."""
    n = len(hashes)
    strict = list(identical_pairs(content))
    picture = [(i, j) for i, j, _ in hash_pairs(hashes, rules.hash_bits)
               if rules.confirm is None or float(embedding[i].astype(np.float32) @ embedding[j]) >= rules.confirm]
    moment = [] if rules.moment is None else [(i, j) for i, j, _ in close(embedding, rules.moment)]
    return [components(n, strict), components(n, strict + picture), components(n, strict + picture + moment)]


def tier_between(levels: list[list[int]], row: int, other: int) -> str:
    """The strictest tier at which ``row`` and ``other`` are in one group ("" for none)."""
    for tier, level in zip(TIERS, levels, strict=True):
        if level[row] == level[other]:
            return tier
    return ""


def group_tier(levels: list[list[int]], rows: list[int]) -> str:
    """The loosest tier a group of ``rows`` needed: the first level at which they are one component."""
    for tier, level in zip(TIERS, levels, strict=True):
        if len({level[r] for r in rows}) == 1:
            return tier
    return TIERS[-1]
