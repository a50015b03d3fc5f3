"""A worker's log lines: one JSON object per line with IMGQ_LOG_FORMAT=json, and never a password.

The worker end to end (JSON lines from Celery, no password in its output) is in tests/test_deploy.py.
"""

from __future__ import annotations

import io
import json
import logging

import pytest

from imgq.settings import Settings
from worker.logs import JsonFormatter, MaskSecrets, mask_secrets


@pytest.mark.parametrize(("text", "masked"), [
    ("Cannot connect to redis://:s3cret@redis:6379/0: refused", "Cannot connect to redis://:***@redis:6379/0: refused"),
    ("broker rediss://user:pw@h/1, results redis://:x@k:1/2", "broker rediss://user:***@h/1, results redis://:***@k:1/2"),
    ("no password: redis://127.0.0.1:6379/0", "no password: redis://127.0.0.1:6379/0"),
    ("odd port redis://:pw@host:port/0", "odd port redis://:***@host:port/0"),
])
def test_url_passwords_are_masked(text, masked):
    assert mask_secrets(text) == masked


def logger_writing_to(stream: io.StringIO, formatter: logging.Formatter) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(MaskSecrets())
    logger = logging.getLogger(f"imgq-test-{id(stream)}")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    return logger


def test_json_lines_carry_time_level_logger_and_message():
    stream = io.StringIO()
    logger = logger_writing_to(stream, JsonFormatter())
    logger.info("Batch %d of job %s\nsecond line", 3, "abc")
    logger.warning("Heartbeat failed: %s", "redis://:hunter2@redis:6379/0 unreachable")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # one line per event, even for a message with a newline
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "Batch 3 of job abc\nsecond line" and first["level"] == "INFO"
    assert first["logger"] == logger.name and first["time"].endswith("+00:00") and first["pid"] > 0
    assert "task_id" not in first  # not logged from a task
    assert second["message"] == "Heartbeat failed: redis://:***@redis:6379/0 unreachable"


def test_exceptions_are_one_field_and_masked_in_both_formats():
    for formatter in (JsonFormatter(), logging.Formatter("%(message)s")):
        stream = io.StringIO()
        logger = logger_writing_to(stream, formatter)
        try:
            raise ConnectionError("Error connecting to redis://:hunter2@redis:6379/0")
        except ConnectionError:
            logger.exception("Batch failed")
        assert "hunter2" not in stream.getvalue() and "redis://:***@redis" in stream.getvalue()


def test_json_exception_field():
    stream = io.StringIO()
    logger = logger_writing_to(stream, JsonFormatter())
    try:
        raise KeyError("lost")
    except KeyError:
        logger.exception("Oops")
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "Oops" and "KeyError: 'lost'" in entry["exception"]


def test_log_format_setting_is_text_or_json():
    assert Settings().log_format == "text"
    assert Settings.from_env({"IMGQ_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ValueError, match="IMGQ_LOG_FORMAT must be one of text, json"):
        Settings.from_env({"IMGQ_LOG_FORMAT": "xml"})
