"""A model whose outputs are not numbers, through a real worker (issue 25, item 11).

A model whose outputs are NaN for every picture never serves: its worker stops at start with one line. A model
whose outputs are NaN for some pictures only serves the others: those get ``model_output`` error records, and
every export (JSON lines, the report's data) stays strict JSON, never a bare NaN token.
"""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from imgq.results.store import ResultStore, delete_namespace
from producer.local.workers import LocalServiceError, LocalWorker
from tests import user_models
from tests.conftest import make_settings

pytestmark = pytest.mark.slow


def strict_json(text: str):
    """``json.loads`` that refuses NaN, Infinity and -Infinity, as every JSON parser but Python's does."""

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def worker_of(redis_url, tmp_path):
    """``worker_of(folder)`` -> ``(settings, worker)``: a worker process serving the model folder on OpenVINO
    (the suite's runtime), started, not waited for; stopped and its namespace deleted afterwards."""
    started = []

    def start(folder):
        settings = make_settings(redis_url, tmp_path, model=str(folder), weights="imagenet")
        worker = LocalWorker(settings)
        worker.start()
        started.append((settings, worker))
        return settings, worker

    yield start
    for settings, worker in started:
        worker.stop()
        delete_namespace(redis_url, settings.namespace)


def test_a_model_whose_outputs_are_nan_stops_its_worker_with_one_line(worker_of, tmp_path):
    settings, worker = worker_of(user_models.nan_folder(tmp_path / "diverged"))
    with pytest.raises(LocalServiceError, match="not finite"):
        worker.wait_ready(ResultStore.from_settings(settings), timeout=240)
    assert worker.started.wait(10) == 2
    log = worker.log_path.read_text()
    said = [line for line in log.splitlines() if line.startswith("imgq worker: ")]
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:4000] if "Traceback" in log else ""
    said = [line for line in said if line.endswith("; exiting")]  # before it: the steps of its start
    assert len(said) == 1, log[-3000:]
    assert "model.keras" in said[0] and "NaN or infinite" in said[0]


def test_pictures_whose_outputs_are_not_finite_get_model_output_records(worker_of, tmp_path):
    settings, worker = worker_of(user_models.flat_nan_folder(tmp_path / "per-picture"))
    worker.wait_ready(ResultStore.from_settings(settings), timeout=240)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for level in (0, 200):  # one flat grey each: no spread, NaN outputs
        user_models.flat_picture(pictures / f"flat-{level:03d}.png", level)
    for level in (60, 190):  # texture: probabilities
        user_models.grey_picture(pictures / f"textured-{level:03d}.png", level, seed=level)

    from producer.cli import cli

    def imgq(*args):
        result = CliRunner().invoke(cli, list(args), env=settings.as_env(), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    job = imgq("submit", str(pictures), "--wait").strip()
    lines = imgq("results", job, "--format", "jsonl").splitlines()
    records = {r["path"].rsplit("/", 1)[1]: r for r in map(strict_json, lines)}
    assert {name: r["status"] for name, r in records.items()} == {
        "flat-000.png": "error", "flat-200.png": "error", "textured-060.png": "ok", "textured-190.png": "ok"}
    for name in ("flat-000.png", "flat-200.png"):
        assert records[name]["error"]["code"] == "model_output" and records[name]["top_k"] == []
        assert "not finite" in records[name]["error"]["message"] and "\n" not in records[name]["error"]["message"]
    assert all(len(records[n]["top_k"]) == 2 for n in ("textured-060.png", "textured-190.png"))

    report = tmp_path / "report.html"
    imgq("report", job, "-o", str(report))
    cards = strict_json(re.search(r'<script id="cards" type="application/json">(.*?)</script>',
                                  report.read_text(), re.S)[1])
    assert sorted(c["e"].split(":")[0] for c in cards if c.get("e")) == ["model_output", "model_output"]
