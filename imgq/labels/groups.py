"""ImageNet's classes in the groups people search by (animal, dog, vehicle, food, ...), from WordNet.

ImageNet's class ids are WordNet 3.0 noun synsets (n02106166 is offset 02106166 of WordNet's data.noun). The
table imgq/imagenet_groups.json gives each class its path through a curated list of WordNet's groups, general
first: Border collie is ``("animal", "dog")``, airliner ``("vehicle", "aircraft")``. It is generated once by
tools/wordnet_groups.py from Debian's wordnet-base (the keep-list and the rules are there) and vendored with
WordNet's licence (imgq/WORDNET_LICENSE); tests/test_groups.py checks that the two still agree.

A group's score in a record is the sum of the probabilities of its classes among the record's top-k: three
terriers at 0.31 each make "dog" 0.93. Only the top-k the worker stored are summed, so a group's score is a
lower bound, short by the probability of its classes outside the top-k (raise ``--top-k`` to close the gap).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

from imgq.contract import Label

TABLE = "imagenet_groups.json"

SHARE = 0.5
# An image is in a group when the group's score reaches this: more of the model's belief in the group than
# against it. Two groups neither of which holds the other cannot both reach it, so an image's groups are one
# path (animal, dog, terrier), whatever its top label.


@lru_cache(maxsize=1)
def _table() -> dict:
    return json.loads(resources.files("imgq").joinpath(TABLE).read_text(encoding="utf-8"))


def path_of(wnid: str) -> tuple[str, ...]:
    """The groups of the class ``wnid``, general first (``("animal", "dog")``); () for an id the table does not
    know (not an ImageNet class, or a class in no kept group)."""
    return tuple(_table()["classes"].get(wnid, ()))


def group_path(group: str) -> tuple[str, ...]:
    """The path of a group itself, ending with it (``("animal", "dog")`` for dog). Raises KeyError for a name
    that is not a group."""
    return tuple(_table()["groups"][group])


def names() -> tuple[str, ...]:
    """Every group's name, in the table's order (the keep-list's)."""
    return tuple(_table()["groups"])


def scores(top_k: Iterable[Label]) -> dict[str, float]:
    """Each group's score among ``top_k``: the sum of its classes' probabilities, best first (ties: the order
    the groups first appear in). Groups of none of the labels are absent."""
    sums: dict[str, float] = {}
    for label in top_k:
        for group in path_of(label.wnid):
            sums[group] = sums.get(group, 0.0) + float(label.score)
    return dict(sorted(sums.items(), key=lambda item: -item[1]))


def above(top_k: Iterable[Label], min_score: float | None) -> list[tuple[str, float]]:
    """``(group, score)`` of the groups scoring at least ``min_score`` (None or 0: every group of the labels),
    best first, scores rounded to 6 decimals (sums of float32 probabilities)."""
    return [(group, round(score, 6)) for group, score in scores(top_k).items() if score >= (min_score or 0.0)]


def memberships(top_k: Iterable[Label], min_score: float | None = None) -> tuple[str, ...]:
    """The groups an image is in: those whose score among its ``top_k`` reaches SHARE, or ``min_score`` when that
    is higher; best first. The one rule of `imgq report --group` and of `imgq classify`'s summary (and of
    `imgq results --groups --min-score S` for S of SHARE or more)."""
    floor = max(SHARE, min_score or 0.0)
    return tuple(group for group, score in scores(top_k).items() if score >= floor)
