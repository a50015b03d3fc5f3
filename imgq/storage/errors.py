"""The error every read and decode step raises for an image it cannot classify: the byte sources
(imgq/storage/local.py), the worker's decoders (worker/images/preprocess.py, worker/images/formats.py)."""

from __future__ import annotations


class ImageError(Exception):
    """An image that cannot be classified; ``code`` is one of imgq.contract.ERROR_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line (records and log lines hold one line), at most ``limit`` long."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit]
