"""Scores that are not numbers never reach an export (issue 25, item 11). The worker's side (a model's NaN
outputs become ``model_output`` records) runs in tests/reliability/test_bad_models.py; here, against a real
Redis, the records an earlier imgq stored with NaN or infinite scores are read back as ``model_output`` errors,
so that `imgq results` and the report write strict JSON; and a Parquet sink file holding such a record reads
the same."""

from __future__ import annotations

import json
import math
import re

import pytest

from imgq.contract import Label, error_record, ok_record
from imgq.jobs import submit as submission
from imgq.labels.classes import class_index
from tests import imagegen

PROVENANCE = {"model": "resnet50", "weights": "random:0 (untrained: labels are meaningless)", "precision": "fp32",
              "runtime": "openvino 2026.4.1", "worker": "w@h"}


def strict_json(text: str):
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def labels(*scores: float) -> list[Label]:
    names = class_index()
    return [Label(names[i][0], names[i][1], score) for i, score in enumerate(scores)]


def earlier_imgq_stored(store, job: str, image: int, path: str, top_k: list[Label], head: dict | None = None):
    """A record as an imgq without the model-output check stored it: an ok record with a NaN score fell back
    to JSON (``J``: float32 NaN != NaN), bare NaN tokens and all; an infinite score packed as float32 (``O``)."""
    store.record_results(job, [ok_record(job, image, path, labels(0.5, 0.25), **PROVENANCE)])
    if not any(math.isnan(t.score) for t in top_k) and head is None:
        store.record_results(job, [ok_record(job, image, path, top_k, **PROVENANCE)])
        return
    key = store.keys.results(job)
    number = store.raw.hget(key, str(image)).partition(b":")[0]
    data = {"status": "ok", "top_k": [t.to_dict() for t in top_k], "error": None, "decode_ms": 1.0,
            "inference_ms": 2.0, **({"head": head} if head else {})}
    store.raw.hset(key, str(image), number + b":J" + json.dumps(data).encode())


@pytest.fixture
def job(settings, store, tmp_path):
    """A finished job of five images: ok, a NaN score, an infinite one, a head's NaN score and an error, stored
    as an earlier imgq stored them."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    paths = [str(imagegen.save(folder / f"{i}.png", size=(16, 16), seed=i)) for i in range(5)]
    job = submission.submit(paths, settings=settings, store=store).job
    store.record_results(job, [ok_record(job, 0, paths[0], labels(0.75, 0.25), **PROVENANCE),
                               error_record(job, 4, paths[4], "corrupt", "truncated", **PROVENANCE)])
    earlier_imgq_stored(store, job, 1, paths[1], labels(float("nan"), 0.25))
    earlier_imgq_stored(store, job, 2, paths[2], labels(float("inf"), 0.25))
    earlier_imgq_stored(store, job, 3, paths[3], labels(0.5, 0.25),
                        head={"name": "beach", "top_k": [{"label": "beach", "score": float("nan")}]})
    return job


def test_stored_scores_that_are_not_finite_read_as_model_output_records(job, run, store):
    lines = run("results", job, "--format", "jsonl").stdout.splitlines()
    records = [strict_json(line) for line in lines]
    assert [(r["status"], (r["error"] or {}).get("code")) for r in records] == [
        ("ok", None), ("error", "model_output"), ("error", "model_output"), ("ok", None), ("error", "corrupt")]
    assert all(r["top_k"] == [] and "not finite" in r["error"]["message"] for r in records[1:3])
    assert records[3]["top_k"][0]["score"] == 0.5 and "not finite" in records[3]["head"]["error"]
    assert records[1]["model"] == "resnet50" and records[1]["worker"] == "w@h"  # the provenance kept
    assert store.status(job).state == "done"


def test_the_report_of_such_a_job_is_strict_json(job, run, tmp_path):
    out = tmp_path / "report.html"
    assert run("report", job, "-o", str(out)).exit_code == 0
    data = re.search(r'<script id="cards" type="application/json">(.*?)</script>', out.read_text(), re.S)[1]
    cards = strict_json(data)
    assert [c.get("e", "").split(":")[0] for c in cards] == ["", "model_output", "model_output", "", "corrupt"]


def test_a_sink_file_with_a_nan_score_reads_as_a_model_output_record(tmp_path):
    from imgq.results import sink

    records = [ok_record("j1", 0, "/a.jpg", labels(0.5, 0.25), **PROVENANCE),
               ok_record("j1", 1, "/b.jpg", labels(float("nan"), 0.25), **PROVENANCE)]
    sink.write_batch(str(tmp_path), "j1", 0, records)  # scores are float columns: an earlier worker's file
    back = list(sink.read_job(str(tmp_path), "j1"))
    assert [r.status for r in back] == ["ok", "error"]
    assert back[1].error.code == "model_output" and back[1].top_k == () and back[1].model == "resnet50"
    for record in back:
        strict_json(json.dumps(record.to_dict(), allow_nan=False))
