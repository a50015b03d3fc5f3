"""The model a name or a folder stands for: a built-in's spec, or a model folder read from disk."""

from __future__ import annotations

import os

from imgq.models.folder import read_model_folder
from imgq.models.spec import BUILTIN, ModelError, ModelSpec, builtin_spec, unknown_name_message


def resolve(name_or_folder: str) -> ModelSpec:
    """The model a name or a folder stands for.

    A built-in name (``resnet50``, see BUILTIN) wins over a folder of that name in the working folder (write
    ``./resnet50`` for the folder). Anything with a path separator, or naming an existing folder, is read as a
    model folder (imgq/models/folder.py). Raises ModelError: an unknown name (with the closest built-in names),
    or each problem of a folder (its message names the file and the fix).
    """
    if name_or_folder in BUILTIN:
        return builtin_spec(name_or_folder)
    if os.sep in name_or_folder or name_or_folder.startswith(".") or os.path.isdir(name_or_folder):
        return read_model_folder(name_or_folder)
    raise ModelError(unknown_name_message(name_or_folder))
