"""The producer's side of activation dumps: what a job's dumps will take, and finding and reading them back.

Workers write one ``.npz`` per image at ``<dump root>/<job>/<image>.npz`` (``worker/batches/dumps.py``): keys are
layer names, arrays have no batch axis. `imgq report`, `imgq show` and `imgq results --embeddings` read
them from the producer's own dump root (the same shared volume, perhaps mounted elsewhere, or the same s3://
prefix), and fall back to the location the worker put in the record; both through their Destination
(imgq/storage/destination.py).

Nothing here imports numpy at import time: the CLI imports this module for its exceptions and the guard.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from imgq.contract import ResultRecord, dump_path
from imgq.models.layers import dump_bytes
from imgq.models.spec import DEFAULT_MODEL
from imgq.storage.locate import destination_for

if TYPE_CHECKING:
    from imgq.results.store import ResultStore

MAX_DUMP_FILE_BYTES = 2 * 1024**3
# One image's dump: every layer of a built-in model in float32 is less (EfficientNetV2-S's 516: 493 MB;
# ResNet50's 177: 148 MB, from imgq.models.layers.dump_bytes).
NPZ_OVERHEAD_PER_ARRAY = 320
# Zip headers and the .npy header of one array in an uncompressed .npz: measured 250-290 bytes for
# ResNet50's layer names; rounded up, so the estimate errs on the large side.


class DumpError(Exception):
    """A dump that is not there or not what was asked for; the message says which and why."""


class DumpTooLarge(DumpError):
    """The dumps of a job would take more than the configured limit."""


def estimate_bytes(images: int, layers: tuple[str, ...], dtype: str, model: str = DEFAULT_MODEL) -> int:
    """Bytes of the .npz files of ``images`` images dumping ``layers`` of ``model`` (a built-in's name: a
    folder model's layer shapes are unknown here and count 0) as ``dtype``."""
    return images * (dump_bytes(layers, dtype, model) + NPZ_OVERHEAD_PER_ARRAY * len(layers))


def format_bytes(n: float) -> str:
    """``n`` bytes for people: ``512 B``, ``3.1 KiB``, ``1.2 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def size_guard(layers: tuple[str, ...], dtype: str, limit: int, model: str = DEFAULT_MODEL) -> Callable[[int], None]:
    """A check for ``enqueue.submit(limit_check=...)``: called with the number of images once the walk is
    done, before the job is committed; raises DumpTooLarge above ``limit`` bytes, so nothing is queued."""

    def check(images: int) -> None:
        estimate = estimate_bytes(images, layers, dtype, model)
        if estimate > limit:
            per_image = format_bytes(estimate / max(images, 1))
            raise DumpTooLarge(
                f"The activation dumps of {images} images ({', '.join(layers)} as {dtype}, {per_image} each) "
                f"would take about {format_bytes(estimate)}, over the limit of {format_bytes(limit)} "
                f"(IMGQ_MAX_DUMP_BYTES). Nothing was queued: pass --yes to queue it anyway, or dump fewer or "
                f"smaller layers.")

    return check


def local_dump_path(dump_root: str, job: str, image: int) -> str:
    """Where the dump of ``image`` is under this machine's dump root. Raises DumpError for a job id that
    is not one (it names a folder: it must never be a path)."""
    try:
        return dump_path(dump_root, job, image)
    except ValueError as exc:
        raise DumpError(str(exc)) from None


def dump_file(record: ResultRecord, dump_root: str) -> str | None:
    """The dump of the image of ``record``, or None when its record has none or the file is gone.

    Looked for under ``dump_root`` first (the shared volume as this machine mounts it, an s3:// prefix), then
    at the location the worker recorded.
    """
    if not record.ok or not record.activations:
        return None
    here = local_dump_path(dump_root, record.job, record.image)
    recorded = record.activations.get("file")
    for path in (here, recorded if recorded != here else None):
        if path and destination_for(path).exists(path):
            return path
    return None


def dumped_layers(record: ResultRecord) -> dict[str, tuple[int, ...]]:
    """Layer name -> shape of one image's activations, as the record lists them (empty without a dump)."""
    layers = (record.activations or {}).get("layers") or {}
    return {name: tuple(shape) for name, shape in layers.items()}


def load_layer(path: str, layer: str):
    """The activations of ``layer`` in the dump at ``path``, as a numpy array of its stored dtype.

    Only that member of the zip is read. Raises DumpError when the file has no such layer or is damaged.
    """
    import zipfile

    import numpy as np

    try:
        # a link, a pipe or a giant: refused (imgq/storage/files.py); an object's size checked before its body
        with destination_for(path).open(path, MAX_DUMP_FILE_BYTES) as file, \
                np.load(file, allow_pickle=False) as dump:
            if layer not in dump.files:
                raise DumpError(f"The dump {path} has no layer {layer!r} (it has: {', '.join(dump.files)}).")
            return dump[layer]
    except FileNotFoundError:
        raise DumpError(f"The dump {path} is gone.") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:  # RefusedFile is a ValueError
        raise DumpError(f"Cannot read the dump {path}: {exc}") from None


def record_of(store: ResultStore, job: str, image: int) -> ResultRecord:
    """The record of ``image`` of ``job``. Raises JobNotFound, or DumpError when the image has none (yet)."""
    status = store.status(job)
    record = store.record(job, image)
    if record is None:
        raise DumpError(f"Job {job} has no record of image {image} (it has images 0 to {status.total - 1}; "
                        f"{status.processed} have records).")
    return record


def layer_of(record: ResultRecord, layer: str, dump_root: str):
    """The activations of ``layer`` for the image of ``record``. Raises DumpError saying what is missing."""
    label = f"Image {record.image} of job {record.job}"
    if record.error is not None:
        raise DumpError(f"{label} was not classified ({record.error.code}): it has no dump.")
    layers = dumped_layers(record)
    if layer not in layers:
        dumped = ", ".join(layers) or "none"
        raise DumpError(f"{label} has no dump of layer {layer!r} (dumped: {dumped}).")
    path = dump_file(record, dump_root)
    if path is None:
        raise DumpError(f"{label}: its dump is not under {dump_root} nor at {(record.activations or {}).get('file')} "
                        f"(set IMGQ_DUMP_ROOT to where the workers write).")
    return load_layer(path, layer)
