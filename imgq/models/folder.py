"""A user's model folder, read without Keras: ``model.keras`` (or ``model.h5``), ``labels.txt`` and optionally
``imgq-model.toml``.

Every file is opened as imgq opens any file on a user's behalf: its real path must stay in the folder (no link
out of it), it must be a regular file under a size cap, and it is opened with O_NONBLOCK (a FIFO named
labels.txt cannot hang the producer or a worker). Each problem is a ModelError whose message is one line naming
the file and the fix: `imgq submit --model FOLDER`, `imgq classify --model FOLDER` and the worker read a folder
here, so a mistake costs one line before anything is queued or started. That covers labels.txt's lines (the rule
of every label, imgq/labels/names.py) and their count against the model's outputs as its config says them
(imgq/models/config.py). Keras reads the model file itself only in the worker (worker/runtimes/keras_model.py),
which checks what only a loaded model can tell (one image input, the outputs a config does not say plainly).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
from typing import BinaryIO

from imgq.labels.names import label_problem
from imgq.models.config import h5_config, input_shape, keras_config, output_units
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
    digest, config = _model_facts(root, model_file)
    shape = input_shape(config) if config is not None and model_file.endswith(".keras") else None
    height, width, channels = shape if shape else (0, 0, 0)  # a .h5 model's: completed by its worker
    spec = ModelSpec(name=name, folder=root, labels=labels, wnids=None, input_size=(height, width),
                     channels=channels, preprocessing=manifest.get("preprocessing", "none"),
                     resize=manifest.get("resize", "squash"), interpolation=manifest.get("interpolation", "nearest"),
                     outputs=manifest.get("outputs", "softmax"), feature_layer=manifest.get("feature_layer"),
                     file_digest=digest[:12], model_file=model_file)
    _check_label_count(spec, config)
    return spec


def _check_label_count(spec: ModelSpec, config: dict | None) -> None:
    """Refuse a labels.txt of another length than the outputs the model's config says (imgq/models/config.py);
    a config that does not say leaves the count to the worker, which loads the model."""
    outputs = output_units(config) if config is not None else None
    problem = label_count_problem(spec, outputs) if outputs is not None else None
    if problem is not None:
        raise ModelError(problem)


def label_count_problem(spec: ModelSpec, outputs: int) -> str | None:
    """Why the labels of ``spec`` do not name its ``outputs`` (None: one label an output), in one line naming
    labels.txt and the model file: the one check of the producer, which reads the count from the model's config,
    and the worker, which reads it from the loaded model."""
    if outputs == len(spec.labels):
        return None
    labels = os.path.join(spec.folder, LABELS_FILE) if spec.folder else "the class index"
    return (f"{labels}: {len(spec.labels)} class names for {outputs} outputs of {spec.model_path or spec.name}; "
            f"write one name a line for each output, in order.")


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
    # Lines end at "\n" alone, as an editor numbers them: str.splitlines() also breaks at \x1c-\x1e and \x85,
    # which would split a label holding one. Spaces, tabs and a CR around a name are not part of it; a
    # control character elsewhere is refused by the label rule.
    lines = [line.strip(" \t\r") for line in text.split("\n")]
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
        problem = label_problem(label)
        if problem is not None:
            raise ModelError(f"{path}: line {number}: {problem}")
        if label in seen:
            raise ModelError(f"{path}: line {number} repeats {label!r} (line {seen[label]}); class names must differ.")
        seen[label] = number
    return tuple(lines)


def _model_facts(root: str, model_file: str) -> tuple[str, dict | None]:
    """The model file's SHA-256 (hex) and its config (imgq/models/config.py): a ``.keras`` archive's, or a
    ``.h5`` file's when h5py can read it (else None)."""
    digest = hashlib.sha256()
    with open_in_folder(root, model_file, MAX_MODEL_BYTES) as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
        file.seek(0)
        config: dict | None
        if model_file.endswith(".keras"):
            config = keras_config(file, os.path.join(root, model_file))
        else:
            config = h5_config(file)
    return digest.hexdigest(), config
