"""Activation dumps: one .npz per image under ``<dump root>/<job>/``, written atomically.

A dump is written to a temporary name in its folder and renamed into place (as huey's FileStorage does), so
a reader (`imgq report`, `imgq results --embeddings`) never sees half a file, and a worker killed mid-write
leaves only a temporary file behind, never a damaged dump.
"""

from __future__ import annotations

import os

import numpy as np

from imgq.contract import dump_path
from imgq.storage.files import atomic_path


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
