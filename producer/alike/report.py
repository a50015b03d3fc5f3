"""The rows `imgq duplicates` writes, one per member of a group, and the jobs' embedding rows gathered."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from imgq.alike.batchfile import BatchVectors
from imgq.alike.collection import Collection, CollectionError, open_collection
from imgq.alike.groups import TIERS, Rules, group, group_tier, tier_between
from imgq.alike.pairs import cosine_pairs
from imgq.alike.phash import popcount

FIELDS = ("group", "tier", "job", "image", "path", "similarity", "keeper")


class AlikeError(Exception):
    """Jobs that cannot be compared (no embedding files, different models or weights); one line for the user."""


@dataclass(frozen=True)
class Rows:
    """The rows of several jobs: ``job`` names the job of each row of ``vectors``."""

    vectors: BatchVectors
    job: np.ndarray


def gather(dump_root: str, jobs: list[str], newest_only: bool = False) -> Rows:
    """The embedding rows of ``jobs`` (resolved ids), in job then image order, read a batch file at a time into
    arrays made once (memory: the rows once, 4 KB a 2048-d photo, not a copy per step). ``newest_only``: less the
    rows of a path that a later job classified again (Collection.superseded: a schedule's edited file is its
    newest picture only). Raises AlikeError for a job without embedding files, and for jobs whose embeddings
    come from different models or weights; BatchFileError."""
    try:
        collection = open_collection(dump_root, jobs)
    except CollectionError as exc:
        raise AlikeError(str(exc)) from None
    n = len(collection)
    image: np.ndarray = np.empty(n, dtype=np.int64)
    phash: np.ndarray = np.empty(n, dtype=np.uint64)
    embedding: np.ndarray = np.empty((n, collection.features), dtype=np.float16)
    content: np.ndarray = np.empty((n, 16), dtype=np.uint8)
    path: np.ndarray = np.empty(n, dtype=object)
    job: np.ndarray = np.empty(n, dtype=object)
    codes = np.empty(n, dtype=np.int64)
    number = {name: i for i, name in enumerate(collection.jobs)}
    for part, batch in collection.batches():
        rows = slice(part.start, part.start + part.rows)
        image[rows], phash[rows], embedding[rows], content[rows] = (batch.image, batch.phash, batch.embedding,
                                                                    batch.content)
        path[rows] = [bytes(p).decode("utf-8", "replace") for p in batch.path.tolist()]
        job[rows], codes[rows] = part.job, number[part.job]
    order = np.lexsort((image, codes))
    if newest_only:
        order = order[~np.isin(order, collection.superseded())]
    if not np.array_equal(order, np.arange(n)):  # a copy: files out of image order, or superseded rows left out
        image, phash, embedding, content, path, job = (a[order] for a in (image, phash, embedding, content, path,
                                                                          job))
    vectors = BatchVectors(image=image, path=path, embedding=embedding, phash=phash, content=content,
                           model=collection.model, weights=collection.weights)
    return Rows(vectors, job)


def indexed_pairs(rows: Rows, collection: Collection):
    """A ``close`` for ``member_rows``: the collection's index's close pairs (imgq.alike.search.close_pairs) in
    the numbering of ``rows`` (gathered from the same jobs, maybe ``newest_only``), matched
    by job and image id."""
    from imgq.alike.search import close_pairs

    code = {job: number for number, job in enumerate(collection.jobs)}
    mine = np.array([code[str(job)] for job in rows.job], dtype=np.int64) << 41 | rows.vectors.image
    theirs = np.concatenate([code[part.job] << 41 | images for part, images in collection.images()])
    order = np.argsort(mine, kind="stable")
    at = np.minimum(np.searchsorted(mine, theirs, sorter=order), len(mine) - 1)
    position = np.where(mine[order[at]] == theirs, order[at], -1)

    def close(_vectors: np.ndarray, above: float):
        for i, j, score in close_pairs(collection, above):
            a, b = int(position[i]), int(position[j])
            if a >= 0 and b >= 0:
                yield min(a, b), max(a, b), score
    return close


def file_size(path: str) -> int:
    """The size of the file at ``path`` (its metadata only, never opened); 0 when it is not a local file."""
    try:
        return os.stat(path).st_size
    except (OSError, ValueError):
        return 0


def keeper_of(group_rows: list[int], paths: np.ndarray) -> int:
    """The suggested keeper of a group: its largest file (ties: the first row). The one rule for `imgq duplicates`,
    the report's duplicates section and `imgq tag --duplicates`. A file's size stands for "largest, sharpest": a
    re-encode at a lower quality, a resize, a crop and, among a burst, a blurred shot (fewer details to code)
    each make a smaller JPEG than the picture they come from."""
    return max(group_rows, key=lambda r: (file_size(str(paths[r])), -r))


def member_rows(rows: Rows, rules: Rules, close=cosine_pairs) -> list[dict]:
    """One dict per member of each group (FIELDS), groups numbered from 1 in order of their first row,
    members by image. ``keeper``: the group's largest file (``keeper_of``). ``tier``: a member's tie to the
    keeper (identical, same picture or same moment; the keeper's line: the loosest tier its group needed);
    ``similarity`` to the keeper: 1.0 identical, 1 - pHash distance/64 for a same picture, the embeddings' cosine
    for a same moment."""
    v = rows.vectors
    levels = group(v.content, v.phash, v.embedding, rules, close)
    members: dict[int, list[int]] = {}
    for row, g in enumerate(levels[-1]):
        members.setdefault(g, []).append(row)
    out = []
    number = 0
    for group_rows in members.values():
        if len(group_rows) < 2:
            continue
        number += 1
        keeper = keeper_of(group_rows, v.path)
        for row in group_rows:
            tier = group_tier(levels, group_rows) if row == keeper else tier_between(levels, row, keeper)
            out.append({"group": number, "tier": tier, "job": str(rows.job[row]), "image": int(v.image[row]),
                        "path": str(v.path[row]), "similarity": _similarity(v, tier, row, keeper),
                        "keeper": row == keeper})
    return out

def _similarity(v: BatchVectors, tier: str, row: int, keeper: int) -> float:
    if tier == TIERS[0]:
        return 1.0
    if tier == TIERS[1]:
        distance = int(popcount(np.array([v.phash[row] ^ v.phash[keeper]], dtype=np.uint64))[0])
        return round(1 - distance / 64, 4)
    return round(float(v.embedding[row].astype(np.float32) @ v.embedding[keeper].astype(np.float32)), 4)
