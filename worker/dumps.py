"""Activation dumps: one .npz per image under ``<dump root>/<job>/``, written atomically.

A dump is written to a temporary name in its folder and renamed into place (as huey's FileStorage does), so
a reader (`imgq report`, `imgq results --embeddings`) never sees half a file, and a worker killed mid-write
leaves only a temporary file behind, never a damaged dump.
"""

from __future__ import annotations

import os

import numpy as np

from imgq.files import atomic_path


def dump_path(root: str, job: str, image: int) -> str:
    """Where the dump of ``image`` goes. ``job`` is a checked id (imgq.contract.JOB_ID) and ``image`` an int,
    so the path cannot leave ``root``; checked again here all the same."""
    root = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root, job, f"{int(image)}.npz"))
    if os.path.dirname(os.path.dirname(path)) != root:
        raise ValueError(f"Expected a dump path under {root}. Received job {job!r}")
    return path


def write_dump(root: str, job: str, image: int, activations: dict[str, np.ndarray], dtype: str) -> dict:
    """Write one image's activations (layer name -> array) as ``dtype``; returns the record's
    ``activations`` entry ``{file, dtype, bytes, layers: {name: shape}}``. Raises OSError (disk full...)."""
    path = dump_path(root, job, image)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    arrays = {name: value.astype(dtype, copy=False) for name, value in activations.items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, **arrays)
    return {"file": path, "dtype": dtype, "bytes": os.path.getsize(path),
            "layers": {name: list(value.shape) for name, value in arrays.items()}}
