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


class SourceUnavailable(Exception):
    """The store that serves an image did not answer (after its client's own retries: refused connections,
    timeouts, 5xx replies such as S3's 503 SlowDown): nothing is known about the image, so no record is made.
    The worker hands the batch back to the queue to be tried again (worker/tasks.py), as for a Redis outage.
    The message is one line and never holds credentials."""


class ListingError(Exception):
    """A location a byte source cannot list at all: a malformed URL, a bucket that does not exist, refused
    credentials, a store that does not answer. Raised rather than yielding nothing, so that a user learns of a
    wrong bucket or key instead of queueing an empty job; one line, never the credentials."""
