"""A user's model folder, read without Keras: ``model.keras`` (or ``model.h5``), ``labels.txt`` and optionally
``imgq-model.toml``.

Every file is opened as imgq opens any file on a user's behalf: its real path must stay in the folder (no link
out of it), it must be a regular file under a size cap, and it is opened with O_NONBLOCK (a FIFO named
labels.txt cannot hang the producer or a worker). Each problem is a ModelError whose message is one line naming
the file and the fix. Keras reads the model file itself only in the worker (worker/runtimes/keras_model.py), which
checks
what only a loaded model can tell (outputs against labels, one image input).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import sys
import zipfile
from typing import BinaryIO

from imgq.models.spec import (
    BUILTIN,
    INTERPOLATIONS,
    OUTPUTS,
    PREPROCESSINGS,
    RESIZES,
    ModelError,
    ModelSpec,
    check_model_name,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (3.10)
    import tomli as tomllib

MODEL_FILES = ("model.keras", "model.h5")
LABELS_FILE = "labels.txt"
MANIFEST_FILE = "imgq-model.toml"

MAX_MODEL_BYTES = 8 * 1024**3
MAX_LABELS_BYTES = 16 * 1024**2
MAX_MANIFEST_BYTES = 64 * 1024
MAX_CONFIG_BYTES = 64 * 1024**2  # config.json inside a .keras archive
MAX_LABELS = 1_000_000

MANIFEST_KEYS = {"name", "preprocessing", "resize", "interpolation", "outputs", "feature_layer"}


def read_model_folder(folder: str) -> ModelSpec:
    """The ModelSpec of the model in ``folder``. Raises ModelError (one line: the file and the fix)."""
    root = os.path.realpath(folder)
    if not os.path.isdir(root):
        raise ModelError(f"{folder}: no such model folder. Give a built-in model name or a folder holding "
                         f"model.keras and labels.txt.")
    model_file = _model_file(root)
    manifest = _manifest(root)
    labels = _labels(root)
    name = manifest.get("name", os.path.basename(root))
    try:
        check_model_name(name)
    except ModelError:
        raise ModelError(f"{_where(root, MANIFEST_FILE if 'name' in manifest else '')}: the model's name {name!r} is "
                         f"not letters, digits, '.', '_' or '-' (at most 64): set name = \"...\" in "
                         f"{MANIFEST_FILE}.") from None
    if name in BUILTIN:
        raise ModelError(f"{root}: the name {name!r} is a built-in model's: set another name = \"...\" in "
                         f"{os.path.join(root, MANIFEST_FILE)}.")
    digest, input_shape = _model_facts(root, model_file)
    height, width, channels = input_shape if input_shape else (0, 0, 0)
    return ModelSpec(name=name, folder=root, labels=labels, wnids=None, input_size=(height, width),
                     channels=channels, preprocessing=manifest.get("preprocessing", "none"),
                     resize=manifest.get("resize", "squash"), interpolation=manifest.get("interpolation", "nearest"),
                     outputs=manifest.get("outputs", "softmax"), feature_layer=manifest.get("feature_layer"),
                     file_digest=digest[:12], model_file=model_file)


def open_in_folder(root: str, name: str, max_bytes: int) -> BinaryIO:
    """``root/name`` opened for reading: a regular file whose real path is in ``root``, at most ``max_bytes``.

    Raises ModelError naming the file and what is wrong with it."""
    path = os.path.join(root, name)
    real = os.path.realpath(path)
    if os.path.dirname(real) != root:
        raise ModelError(f"{path}: a link out of the model folder; copy the file into {root}.")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing.") from None
    except OSError as exc:
        reason = "a symlink loop" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        raise ModelError(f"{path}: cannot be read ({reason}).") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ModelError(f"{path}: not a regular file (a folder, pipe or device); put the file itself there.")
    if info.st_size > max_bytes:
        os.close(fd)
        raise ModelError(f"{path}: {info.st_size} bytes is more than imgq reads for it ({max_bytes}).")
    return os.fdopen(fd, "rb")


def _where(root: str, name: str) -> str:
    return os.path.join(root, name) if name else root


def _model_file(root: str) -> str:
    present = [name for name in MODEL_FILES if os.path.lexists(os.path.join(root, name))]
    if not present:
        raise ModelError(f"{root}: no model.keras (nor model.h5): save your model there with "
                         f"model.save('{os.path.join(root, 'model.keras')}').")
    if len(present) > 1:
        raise ModelError(f"{root}: both model.keras and model.h5; keep one.")
    return present[0]


def _manifest(root: str) -> dict:
    if not os.path.lexists(os.path.join(root, MANIFEST_FILE)):
        return {}
    path = os.path.join(root, MANIFEST_FILE)
    with open_in_folder(root, MANIFEST_FILE, MAX_MANIFEST_BYTES) as file:
        try:
            manifest = tomllib.loads(file.read().decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ModelError(f"{path}: not valid TOML ({' '.join(str(exc).split())}).") from None
    unknown = sorted(set(manifest) - MANIFEST_KEYS)
    if unknown:
        raise ModelError(f"{path}: unknown key {unknown[0]!r}; expected some of {', '.join(sorted(MANIFEST_KEYS))}.")
    choices = {"preprocessing": PREPROCESSINGS, "resize": RESIZES, "interpolation": INTERPOLATIONS,
               "outputs": OUTPUTS}
    for key, allowed in choices.items():
        if key in manifest and manifest[key] not in allowed:
            raise ModelError(f"{path}: {key} = {manifest[key]!r}; expected one of {', '.join(allowed)}.")
    for key in ("name", "feature_layer"):
        if key in manifest and (not isinstance(manifest[key], str) or not manifest[key]):
            raise ModelError(f"{path}: {key} must be a non-empty string. Received: {manifest[key]!r}.")
    return manifest


def _labels(root: str) -> tuple[str, ...]:
    path = os.path.join(root, LABELS_FILE)
    if not os.path.lexists(path):
        raise ModelError(f"{path}: missing; write your class names there, one a line, in the order of the "
                         f"model's outputs.")
    with open_in_folder(root, LABELS_FILE, MAX_LABELS_BYTES) as file:
        try:
            text = file.read().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ModelError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8.") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ModelError(f"{path}: no class names; write them one a line, in the order of the model's outputs.")
    if len(lines) > MAX_LABELS:
        raise ModelError(f"{path}: {len(lines)} class names is more than imgq takes ({MAX_LABELS}).")
    seen: dict[str, int] = {}
    for number, label in enumerate(lines, 1):
        if not label:
            raise ModelError(f"{path}: line {number} is empty; every line names one class (remove it, or name it).")
        if label in seen:
            raise ModelError(f"{path}: line {number} repeats {label!r} (line {seen[label]}); class names must differ.")
        seen[label] = number
    return tuple(lines)


def _model_facts(root: str, model_file: str) -> tuple[str, tuple[int, int, int] | None]:
    """The model file's SHA-256 (hex) and, for a ``.keras`` file, its input shape (height, width, channels)
    read from the archive's config.json (None when the config does not say, and for ``.h5``)."""
    digest = hashlib.sha256()
    with open_in_folder(root, model_file, MAX_MODEL_BYTES) as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
        shape = None
        if model_file.endswith(".keras"):
            file.seek(0)
            shape = _keras_input_shape(file, os.path.join(root, model_file))
    return digest.hexdigest(), shape


def _keras_input_shape(file: BinaryIO, path: str) -> tuple[int, int, int] | None:
    try:
        with zipfile.ZipFile(file) as archive:
            info = archive.getinfo("config.json")
            if info.file_size > MAX_CONFIG_BYTES:
                raise ModelError(f"{path}: its config.json is {info.file_size} bytes, more than imgq reads.")
            config = json.loads(archive.read(info).decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, json.JSONDecodeError, OSError):
        raise ModelError(f"{path}: not a Keras model archive; save the model with model.save('model.keras') "
                         f"(Keras 3).") from None
    shapes = [layer.get("config", {}).get("batch_shape") for layer in config.get("config", {}).get("layers", [])
              if isinstance(layer, dict) and layer.get("class_name") == "InputLayer"]
    if len(shapes) != 1 or not isinstance(shapes[0], list) or len(shapes[0]) != 4:
        return None  # the worker, which loads the model, says what is wrong with its inputs
    _, height, width, channels = shapes[0]
    if not all(isinstance(v, int) and v > 0 for v in (height, width, channels)):
        return None
    return height, width, channels
