"""Close pairs of a set of rows, by perceptual-hash distance or by embedding similarity, found by exact search
in blocks: memory stays bounded (a block of rows against all) whatever the number of rows."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from imgq.alike.phash import popcount

BLOCK_CELLS = 1 << 21  # cells of one block's (rows x all) matrix: ~16 MB of int64 distances


def _blocks(n: int) -> Iterator[tuple[int, int]]:
    step = max(1, BLOCK_CELLS // max(n, 1))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def hash_pairs(hashes: np.ndarray, within: int) -> Iterator[tuple[int, int, int]]:
    """``(i, j, distance)`` for every i < j whose hashes differ in at most ``within`` bits."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    for start, stop in _blocks(len(hashes)):
        distance = popcount(np.bitwise_xor(hashes[start:stop, None], hashes[None, :]))
        rows, cols = np.nonzero(distance <= within)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            if c > start + r:
                yield start + r, c, int(distance[r, c])


def cosine_pairs(vectors: np.ndarray, above: float) -> Iterator[tuple[int, int, float]]:
    """``(i, j, cosine)`` for every i < j whose L2-normalised vectors have a cosine of at least ``above``."""
    values = np.asarray(vectors, dtype=np.float32)
    for start, stop in _blocks(len(values)):
        cosine = values[start:stop] @ values.T
        rows, cols = np.nonzero(cosine >= above)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            if c > start + r:
                yield start + r, c, float(cosine[r, c])


def hash_histogram(hashes: np.ndarray, skip: np.ndarray | None = None) -> np.ndarray:
    """How many pairs i < j lie at each distance 0..64 (an int64 array of 65); ``skip``: a key per row,
    pairs with equal keys (identical files) not counted."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    counts = np.zeros(65, dtype=np.int64)
    for start, stop in _blocks(len(hashes)):
        distance = popcount(np.bitwise_xor(hashes[start:stop, None], hashes[None, :]))
        upper = np.arange(len(hashes))[None, :] > np.arange(start, stop)[:, None]
        if skip is not None:
            upper &= skip[start:stop, None] != skip[None, :]
        counts += np.bincount(distance[upper], minlength=65)
    return counts


def top_k(vectors: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` rows most similar to ``query`` by cosine (vectors L2-normalised), best first, in blocks."""
    values = np.asarray(vectors)
    q = np.asarray(query, dtype=np.float32)
    best: list[tuple[float, int]] = []
    step = max(1, BLOCK_CELLS // max(values.shape[1] if values.ndim == 2 else 1, 1))
    for start in range(0, len(values), step):
        scores = values[start:start + step].astype(np.float32) @ q
        for row in np.argsort(-scores, kind="stable")[:k].tolist():
            best.append((float(scores[row]), start + row))
        best = sorted(best, key=lambda item: (-item[0], item[1]))[:k]
    return [(row, score) for score, row in best]
