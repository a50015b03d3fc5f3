"""Activation dumps: one .npz per image under ``<dump root>/<job>/``, written atomically.

The dump root is a local folder or an s3:// prefix (IMGQ_DUMP_ROOT), written through its Destination
(imgq/storage/destination.py): a local dump is written to a temporary name in its folder and renamed into place
(as huey's FileStorage does), an object is sent as one PUT once it is whole. Either way a reader (`imgq report`,
`imgq results --embeddings`) never sees half a file, and a worker killed mid-write leaves no damaged dump.
"""

from __future__ import annotations

import numpy as np

from imgq.contract import dump_path
from imgq.storage.locate import destination_for


def write_dump(root: str, job: str, image: int, activations: dict[str, np.ndarray], dtype: str) -> dict:
    """Write one image's activations (layer name -> array) as ``dtype``; returns the record's
    ``activations`` entry ``{file, dtype, bytes, layers: {name: shape}}``. Raises OSError (disk full, a store
    that refused the write or did not answer: WriteError)."""
    path = dump_path(root, job, image)
    destination = destination_for(path)
    arrays = {name: value.astype(dtype, copy=False) for name, value in activations.items()}
    with destination.writing(path) as file:
        np.savez(file, **arrays)
        size = destination.size(file)
    return {"file": path, "dtype": dtype, "bytes": size,
            "layers": {name: list(value.shape) for name, value in arrays.items()}}
