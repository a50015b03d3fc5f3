"""The k rows of a collection closest to a vector by cosine: exact search (every row, a batch file at a time) up to
APPROXIMATE_ABOVE rows, and above that an approximate index, chosen by size.

The approximate index is faiss' inverted-file index (IVF) with its vectors kept as float16 (a scalar quantizer,
``QT_fp16``: 2 bytes a feature, as in the batch files, so no precision is lost but float16's), inner product
(the vectors are L2-normalised: the cosine). k-means (faiss', seeded) splits the rows into about sqrt(n) lists;
a search scans the NPROBE lists whose centres are closest to the query. Measured against exact search on
synthetic clustered vectors (bench/similar.py, docs/duplicates.md): its recall@10 and its latency.

The index is built once per collection and cached beside its embeddings under a local dump root
(``<dump root>/<job>/similar-*.ivf`` for one job, ``<dump root>/collections/`` for several), and under an s3:// dump
root in imgq's local state folder (``<state dir>/indexes/<root's digest>/<job>/``, imgq/alike/cache.py: faiss maps a
local file, and an object store has none), named by its jobs and by the collection's digest
(imgq/alike/collection.py: each file's key and version, an object's size and ETag): a collection whose files changed
gets a new index, and its stale one is removed. It is read memory-mapped (faiss' IO_FLAG_MMAP: the lists stay on
disk and only those a search scans are paged in), from a file opened by imgq's rules (no link followed, a regular
file, a size cap, never a blocking open): faiss reads the descriptor that was checked, through /proc/self/fd, not
the name again. A folder where nothing can be written is said in one line before the build, not after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from imgq.alike import cache
from imgq.alike.collection import Collection
from imgq.storage.files import atomic_path, open_regular
from imgq.storage.locate import destination_for, is_local_folder

APPROXIMATE_ABOVE = 1_000_000  # rows: exact search up to this many (issue 28), the approximate index above
PAIRS_APPROXIMATE_ABOVE = 50_000  # rows: `imgq duplicates` finds same moments by the index above (exact is n^2)
NPROBE = 32  # lists a search scans: with sqrt(n) lists, about 32/sqrt(n) of the rows (3% at 1 M)
PAIRS_NPROBE = 8  # lists each row's search for close pairs scans (`imgq duplicates`): pairs that close share lists
TRAIN_PER_LIST = 40  # training rows per list (faiss warns under 39); sampled, seeded
KMEANS_ITERATIONS = 10  # faiss' default is 25: fewer, a faster build; recall@10 is measured with 10 (bench/similar.py)
MAX_LISTS = 4096
INDEX_KIND = "ivf-fp16-v1"  # part of the cache's name: a change of the index's parameters rebuilds it
INDEX_FILE = re.compile(r"(similar-[0-9a-f]{16}-)[0-9a-f]{16}\.ivf")


class IndexUnavailable(Exception):
    """The approximate index cannot be built or read here (faiss not installed, a cache file refused); one line."""


@dataclass(frozen=True)
class Found:
    """The rows found, best first, with their cosines; ``method``: ``exact`` or ``approximate``."""

    rows: list[int]
    scores: list[float]
    method: str


def top_k(collection: Collection, query: np.ndarray, k: int, *, exclude=(),
          approximate_above: int | None = None) -> Found:
    """The ``k`` rows of ``collection`` closest to ``query`` (L2-normalised), best first, the rows of ``exclude``
    (row numbers: the query's own, a schedule's superseded rows) left out: exact search when the collection has
    at most ``approximate_above`` rows (None: APPROXIMATE_ABOVE, read when called, as the CLI's line about a
    build reads it), else the cached index (built on first use). Raises IndexUnavailable, BatchFileError."""
    left_out = np.unique(np.asarray(list(exclude), dtype=np.int64))
    if len(collection) <= (APPROXIMATE_ABOVE if approximate_above is None else approximate_above):
        rows, scores = exact_top_k(collection, query, k, left_out)
        return Found(rows, scores, "exact")
    rows, scores = approximate_top_k(collection, query, k, left_out)
    return Found(rows, scores, "approximate")


def exact_top_k(collection: Collection, query: np.ndarray, k: int,
                exclude: np.ndarray | None = None) -> tuple[list[int], list[float]]:
    """Every row's cosine with ``query``, a batch file at a time (memory: one file and k rows), the best ``k``
    but the rows of ``exclude`` (sorted); ties by row number."""
    q = np.asarray(query, dtype=np.float32).ravel()
    best_rows = np.zeros(0, dtype=np.int64)
    best_scores = np.zeros(0, dtype=np.float32)
    for part, batch in collection.batches():
        scores = batch.embedding.astype(np.float32) @ q
        rows = np.arange(part.start, part.start + part.rows, dtype=np.int64)
        if exclude is not None and len(exclude):
            keep = ~np.isin(rows, exclude, assume_unique=True)
            rows, scores = rows[keep], scores[keep]
        best_rows, best_scores = _best(np.concatenate([best_rows, rows]), np.concatenate([best_scores, scores]), k)
    return best_rows.tolist(), [float(s) for s in best_scores]


def _best(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((rows, -scores))[:k]
    return rows[order], scores[order]


def approximate_top_k(collection: Collection, query: np.ndarray, k: int,
                      exclude: np.ndarray | None = None) -> tuple[list[int], list[float]]:
    """The ``k`` best rows but those of ``exclude`` by the collection's index (built and cached when it has
    none): the lists closest to the query are scanned, the excluded rows skipped as they are met."""
    faiss = _faiss()
    index = cached_index(collection)
    params = faiss.SearchParametersIVF(nprobe=min(NPROBE, index.nlist))
    if exclude is not None and len(exclude):
        batch = faiss.IDSelectorBatch(exclude)
        skip = faiss.IDSelectorNot(batch)  # holds a pointer to ``batch``: both live until the search is done
        params.sel = skip
    scores, rows = index.search(np.asarray(query, dtype=np.float32).reshape(1, -1), k, params=params)
    found = [(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0]
    return [r for r, _ in found], [s for _, s in found]


def close_pairs(collection: Collection, above: float, nprobe: int = PAIRS_NPROBE) -> Iterator[tuple[int, int, float]]:
    """``(i, j, cosine)`` for the rows i < j of ``collection`` whose cosine is over ``above``, found by the
    collection's index (built and cached when it has none): each row's range search over the ``nprobe`` lists
    nearest it, a batch file of rows at a time. Approximate: a pair whose rows fall in lists far apart is missed
    (bench/similar.py measures how many against exact search). Time grows as n times the rows of ``nprobe``
    lists (about n^1.5), not n^2."""
    faiss = _faiss()
    index = cached_index(collection)
    params = faiss.SearchParametersIVF(nprobe=min(nprobe, index.nlist))
    for part, batch in collection.batches():
        limits, scores, rows = index.range_search(batch.embedding.astype(np.float32), float(above), params=params)
        for offset in range(part.rows):
            row = part.start + offset
            found = slice(limits[offset], limits[offset + 1])
            for other, score in zip(rows[found].tolist(), scores[found].tolist(), strict=True):
                if other > row:
                    yield row, other, score


def cached_index(collection: Collection):
    """The collection's index, read from its cache, built there first when there is none."""
    path = index_file(collection)
    index = load_index(path, collection)
    if index is None:
        _check_cacheable(collection, path)
        build_index(collection, path)
        index = load_index(path, collection)
    if index is None:
        raise IndexUnavailable(f"{path}: the index was written and is gone")
    return index


def index_file(collection: Collection) -> str:
    """Where the collection's index is cached: in ``index_folder``, named by its jobs (``similar-<jobs>-``) and
    by their files' versions and the index's kind (``<version>.ivf``)."""
    jobs = _digest("\n".join(collection.jobs))
    version = _digest(f"{INDEX_KIND}:{collection.digest}")
    return os.path.join(index_folder(collection), f"similar-{jobs}-{version}.ivf")


def index_folder(collection: Collection) -> str:
    """The folder of the collection's index: its job's folder, or ``collections/`` for several jobs, beside the
    embeddings under a local dump root (shared by whoever shares the folder); under an object-storage root, the
    same folders in ``<state dir>/indexes/<root's digest>/``, on this machine. Raises IndexUnavailable for a
    collection in object storage opened without a state folder."""
    folder = collection.jobs[0] if len(collection.jobs) == 1 else "collections"
    if is_local_folder(collection.root):
        return os.path.join(collection.root, folder)
    if not collection.state_dir:
        raise IndexUnavailable(f"The approximate index of {collection.root}'s embeddings is cached in imgq's state "
                               f"folder, and none was given.")
    return cache.folder(collection.state_dir, collection.root, folder)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _check_cacheable(collection: Collection, path: str) -> None:
    """Raises IndexUnavailable when nothing can be written in ``path``'s folder (made as needed): said before
    the build, which takes minutes for millions of photos, rather than after it."""
    folder = os.path.dirname(path)
    try:
        destination_for(folder).check_writable(folder)
    except OSError as exc:
        raise _not_cached(collection, folder, exc) from None


def _not_cached(collection: Collection, folder: str, exc: Exception) -> IndexUnavailable:
    reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc).splitlines()[0]
    return IndexUnavailable(f"The approximate index of {len(collection):,} photos cannot be cached in {folder}: "
                            f"{reason.rstrip('.')} (docs/duplicates.md).")


def lists_for(rows: int) -> int:
    """The number of IVF lists for ``rows`` vectors: about sqrt(rows), at most MAX_LISTS."""
    return max(1, min(MAX_LISTS, round(math.sqrt(rows))))


def max_index_bytes(collection: Collection) -> int:
    """The largest cache file the collection's index can be: 2 bytes a feature and an 8-byte id per row, the
    lists' centres (float32) and their headers, with room to spare; a larger file is refused."""
    rows, lists = len(collection), lists_for(len(collection))
    return rows * (collection.features * 2 + 8) + lists * (collection.features * 4 + 64) + (1 << 24)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise IndexUnavailable("The approximate index needs faiss (pip install 'imgq[alike]'); this collection "
                               "is over the exact search's size.") from None
    return faiss


def build_index(collection: Collection, path: str, seed: int = 0) -> dict:
    """Build the collection's index and write it to ``path`` atomically, removing stale indexes beside it;
    returns ``{rows, lists, bytes}``. Two passes over the batch files: the training sample, then every row.
    Raises IndexUnavailable when it cannot be written (nothing is left under ``path``), BatchFileError when a
    file cannot be read or was written again since the collection was opened.
    Memory: the index's 2 bytes a feature a row while it is built (4 GB for a million 2048-d rows)."""
    faiss = _faiss()
    n, d = len(collection), collection.features
    lists = lists_for(n)
    sample = _sample(collection, min(n, TRAIN_PER_LIST * lists), seed)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFScalarQuantizer(quantizer, d, lists, faiss.ScalarQuantizer.QT_fp16,
                                          faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.seed = seed
    index.cp.min_points_per_centroid = 1  # a small collection's lists: no warning on stderr, they are few rows each
    index.train(sample)
    del sample
    for part, batch in collection.batches():
        index.add_with_ids(batch.embedding.astype(np.float32),
                           np.arange(part.start, part.start + part.rows, dtype=np.int64))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_path(path) as tmp:
            faiss.write_index(index, tmp)
    except (OSError, RuntimeError) as exc:  # faiss' own write raises RuntimeError (a full disk)
        raise _not_cached(collection, os.path.dirname(path), exc) from None
    _remove_stale(path)
    return {"rows": n, "lists": lists, "bytes": os.path.getsize(path)}


def _sample(collection: Collection, size: int, seed: int) -> np.ndarray:
    """``size`` rows drawn evenly (seeded) from the collection, as float32."""
    chosen = np.sort(np.random.default_rng(seed).choice(len(collection), size=size, replace=False))
    out = np.empty((size, collection.features), dtype=np.float32)
    filled = 0
    for part, batch in collection.batches():
        mine = chosen[(chosen >= part.start) & (chosen < part.start + part.rows)] - part.start
        out[filled:filled + len(mine)] = batch.embedding[mine]
        filled += len(mine)
    return out


def _remove_stale(path: str) -> None:
    """The indexes of older versions of the same jobs beside ``path`` (regular files only); other collections'
    (of other jobs, in ``collections/``) stay."""
    folder, mine = os.path.split(path)
    jobs = mine[:len("similar-") + 17]
    for name in os.listdir(folder):
        other = os.path.join(folder, name)
        matched = INDEX_FILE.fullmatch(name)
        if (name != mine and matched and matched.group(1) == jobs and os.path.isfile(other)
                and not os.path.islink(other)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(other)


def load_index(path: str, collection: Collection):
    """The index cached at ``path``, memory-mapped; None when there is none. Raises IndexUnavailable for a file
    refused (a link, not a regular file, over ``max_index_bytes``) or not a faiss index of this collection."""
    faiss = _faiss()
    try:
        file = open_regular(path, max_index_bytes(collection))
    except NotADirectoryError:  # a file where one of its folders should be: no index there (and none can be)
        return None
    except (OSError, ValueError) as exc:
        raise IndexUnavailable(f"{path}: {exc}") from None
    if file is None:
        return None
    with file:
        try:
            index = faiss.read_index(f"/proc/self/fd/{file.fileno()}", faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError as exc:
            raise IndexUnavailable(f"{path}: not a faiss index ({str(exc).splitlines()[0]})") from None
    if index.ntotal != len(collection) or index.d != collection.features:
        raise IndexUnavailable(f"{path}: an index of {index.ntotal} rows of {index.d} features, not of this "
                               f"collection's {len(collection)} of {collection.features}")
    return index
