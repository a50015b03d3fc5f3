"""Close pairs of a set of rows, by perceptual-hash distance or by embedding similarity, found by exact search
in square tiles on and above the diagonal: memory stays bounded (one tile) whatever the number of rows, and
time grows as its square (docs/duplicates.md has the figures)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from imgq.alike.phash import popcount

BLOCK_CELLS = 1 << 21  # cells of one tile's (rows x columns) matrix: ~16 MB of int64 distances or float64 scores


def _side(n: int) -> int:
    """The side of a square tile of at most BLOCK_CELLS cells (a tile of one row when n is that small)."""
    return max(1, min(n, int(BLOCK_CELLS ** 0.5)))


def _tiles(n: int) -> Iterator[tuple[int, int, int, int]]:
    """``(row start, row stop, column start, column stop)`` of the tiles on and above the diagonal of an n x n
    matrix: each pair i < j is in exactly one tile, and memory is one tile whatever n."""
    side = _side(n)
    for start in range(0, n, side):
        for column in range(start, n, side):
            yield start, min(n, start + side), column, min(n, column + side)


def _distances(hashes: np.ndarray, start: int, stop: int, column: int, end: int) -> np.ndarray:
    """The bits between rows start..stop and column..end of ``hashes``: numpy's bitwise_count keeps them as uint8
    (a byte a cell; 3x faster a tile than int64's eight, measured on machine A), else popcount's int64."""
    xor = np.bitwise_xor(hashes[start:stop, None], hashes[None, column:end])
    return np.bitwise_count(xor) if hasattr(np, "bitwise_count") else popcount(xor)


def hash_pairs(hashes: np.ndarray, within: int) -> Iterator[tuple[int, int, int]]:
    """``(i, j, distance)`` for every i < j whose hashes differ in at most ``within`` bits."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    for start, stop, column, end in _tiles(len(hashes)):
        distance = _distances(hashes, start, stop, column, end)
        rows, cols = np.nonzero(distance <= within)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            if column + c > start + r:
                yield start + r, column + c, int(distance[r, c])


def cosine_pairs(vectors: np.ndarray, above: float) -> Iterator[tuple[int, int, float]]:
    """``(i, j, cosine)`` for every i < j whose L2-normalised vectors have a cosine of at least ``above``. Tile
    by tile, each converted to float32 as it is used (BLAS has no float16): memory is the vectors as given plus
    two tiles' rows, not a float32 copy of them all."""
    values = np.asarray(vectors)
    left = -1
    for start, stop, column, end in _tiles(len(values)):
        if left != start:
            rows_block, left = values[start:stop].astype(np.float32), start
        cosine = rows_block @ values[column:end].astype(np.float32).T
        rows, cols = np.nonzero(cosine >= above)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            if column + c > start + r:
                yield start + r, column + c, float(cosine[r, c])


def hash_histogram(hashes: np.ndarray, skip: np.ndarray | None = None) -> np.ndarray:
    """How many pairs i < j lie at each distance 0..64 (an int64 array of 65); ``skip``: a key per row,
    pairs with equal keys (identical files) not counted."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    counts = np.zeros(65, dtype=np.int64)
    for start, stop, column, end in _tiles(len(hashes)):
        distance = _distances(hashes, start, stop, column, end)
        upper = np.arange(column, end)[None, :] > np.arange(start, stop)[:, None]
        if skip is not None:
            upper &= skip[start:stop, None] != skip[None, column:end]
        counts += np.bincount(distance[upper], minlength=65)
    return counts
