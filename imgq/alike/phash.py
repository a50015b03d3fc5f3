"""The 64-bit DCT perceptual hash (pHash) of a picture, with numpy alone.

The picture's grey levels (ITU-R 601 luma) are shrunk to 32x32 by averaging blocks, transformed by a 2-D
DCT-II, and the 8x8 lowest frequencies compared with their median: one bit per coefficient, 1 above it. The
DC coefficient is kept, as imagehash's ``phash`` does. Two pictures' distance is the number of differing bits
(0..64): a re-encode or a resize moves a few bits, another photo about 32.
"""

from __future__ import annotations

import functools

import numpy as np

SIZE, LOW = 32, 8
_n = np.arange(SIZE)
# The orthonormal DCT-II matrix: row k is the k-th cosine; DCT(X) = D @ X @ D.T.
_DCT = np.sqrt(2.0 / SIZE) * np.cos(np.pi * (2 * _n[None, :] + 1) * _n[:, None] / (2 * SIZE))
_DCT[0] /= np.sqrt(2.0)
_BITS = (1 << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)


def grey(pixels: np.ndarray) -> np.ndarray:
    """The float luma of ``pixels``: (H, W) or (H, W, 1) grey, or (H, W, 3) RGB, any numeric dtype."""
    values = np.asarray(pixels, dtype=np.float32)
    if values.ndim == 3 and values.shape[2] == 3:
        return values @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if values.ndim == 3 and values.shape[2] == 1:
        return values[..., 0]
    if values.ndim == 2:
        return values
    raise ValueError(f"Expected pixels of shape (H, W), (H, W, 1) or (H, W, 3). Received: {values.shape}")


def shrink(values: np.ndarray, size: int = SIZE) -> np.ndarray:
    """``values`` (H, W) averaged down to (size, size): each output cell is the mean of the input cells its
    area covers (a box filter with fractional weights), so no pixel is skipped, as a nearest resize would."""
    rows = _box_weights(values.shape[0], size)
    cols = _box_weights(values.shape[1], size)
    # einsum, not @: BLAS spreads products this small over threads, and on a loaded machine that costs 20x.
    return np.einsum("ij,kj->ik", np.einsum("ij,jk->ik", rows, values.astype(np.float32)), cols)


@functools.lru_cache(maxsize=64)
def _box_weights(length: int, size: int) -> np.ndarray:
    """The (size, length) matrix averaging ``length`` cells into ``size``, by the overlap of their areas."""
    if length < 1:
        raise ValueError("Expected a picture of at least one pixel a side.")
    edges = np.linspace(0, length, size + 1)
    starts, ends = edges[:-1, None], edges[1:, None]
    cells = np.arange(length)[None, :]
    overlap = np.clip(np.minimum(ends, cells + 1) - np.maximum(starts, cells), 0, None)
    weights = (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)
    weights.flags.writeable = False  # shared by every call (cached)
    return weights


def phash(pixels: np.ndarray) -> int:
    """The 64-bit pHash of ``pixels`` (see ``grey``), as an unsigned int: bit 63 is frequency (0, 0)."""
    low = (_DCT @ shrink(grey(pixels)).astype(np.float64) @ _DCT.T)[:LOW, :LOW].ravel()
    # Above the median by more than rounding noise: a flat picture's coefficients, all ~1e-15 but its mean,
    # give one bit (frequency 0, 0), the same for every flat picture, not bits of noise.
    bits = low > np.median(low) + 1e-5 * max(float(np.abs(low).max()), 1.0)
    return int(_BITS[bits].sum(dtype=np.uint64))


def distances(hash_: int | np.uint64, hashes: np.ndarray) -> np.ndarray:
    """The Hamming distances (int) from one hash to each of ``hashes`` (uint64 array)."""
    xor = np.bitwise_xor(np.asarray(hashes, dtype=np.uint64), np.uint64(hash_))
    return popcount(xor)


def popcount(values: np.ndarray) -> np.ndarray:
    """The number of 1 bits of each uint64 of ``values``, as int64: numpy's own ufunc where it has one (2.0 on,
    the CPU's POPCNT), else a table of the bits of each byte (8 int64 lookups a value)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(np.asarray(values, dtype=np.uint64)).astype(np.int64)
    as_bytes = np.asarray(values, dtype=np.uint64).view(np.uint8).reshape(*np.shape(values), 8)
    return _BYTE_BITS[as_bytes].sum(axis=-1).astype(np.int64)


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
