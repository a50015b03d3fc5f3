"""A worker's log lines: Celery's text, or one JSON object per line (IMGQ_LOG_FORMAT=json); no passwords.

Celery sets up logging itself when the worker starts, after the model is loaded (worker/app.py): a handler
on the root logger and one on the task logger, announced by the ``after_setup_logger`` and
``after_setup_task_logger`` signals. ``install`` hooks those signals: in either format, URL passwords are
masked (a broker URL can end up in an exception's text); with json, the handlers get a JsonFormatter and
Celery's start-up banner (text, on stdout) is left out, so a log collector reads JSON lines only.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime, timezone

from celery import signals

from imgq.settings import mask_url

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,:;)\]]")
# Up to a space or quote, less the punctuation of the sentence around it ("... at URL: refused").


def mask_secrets(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (see imgq.settings.mask_url)."""
    return _URL.sub(lambda match: _mask_one(match.group(0)), text)


def _mask_one(url: str) -> str:
    try:
        return mask_url(url)
    except ValueError:  # not parseable as a URL (a bad port, say): hide whatever stands before an '@'
        return re.sub(r"//[^@/]*@", "//***@", url)


class MaskSecrets(logging.Filter):
    """Masks URL passwords in a record's message and exception before any formatter sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (UTC, ISO 8601), level, logger, message, pid, and the
    task id and name when the record was logged while a task ran (in that task's thread)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "message": mask_secrets(record.getMessage()),
                 "pid": record.process or os.getpid()}
        entry.update(_current_task())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = mask_secrets(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _current_task() -> dict:
    from celery._state import get_current_task  # the task of this thread, if any

    task = get_current_task()
    if task is None or task.request is None or task.request.id is None:
        return {}
    return {"task_id": task.request.id, "task_name": task.name}


def install(log_format: str) -> None:
    """Hook Celery's logging set-up: mask passwords, and with ``log_format == "json"`` write JSON lines."""
    as_json = log_format == "json"

    def configure(logger: logging.Logger, **_) -> None:
        for handler in logger.handlers:
            handler.addFilter(MaskSecrets())
            if as_json:
                handler.setFormatter(JsonFormatter())

    def no_banner(instance, **_) -> None:
        # Celery's banner is many lines of text on stdout. Its essentials are in the "imgq worker: <model>
        # ready ..." line and in Celery's own "Connected to ..." and "... ready." log events.
        instance.quiet = True

    # weak=False: the receivers are local functions, which a weak reference would let disappear.
    signals.after_setup_logger.connect(configure, weak=False)
    signals.after_setup_task_logger.connect(configure, weak=False)
    if as_json:
        signals.celeryd_init.connect(no_banner, weak=False)
