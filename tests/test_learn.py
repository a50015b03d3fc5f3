"""`imgq learn` and `--head` end to end: a real worker (random weights) classifies example folders whose
labels its untrained features can tell apart (colour tints), the head is fitted and then applied by the
worker in the forward pass of later jobs."""

from __future__ import annotations

import json
import os
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from imgq.results.store import ResultStore
from tests.processes import imgq_cli, wait_until_done

TINTS = {"red": (1.0, 0.25, 0.25), "green": (0.25, 1.0, 0.25), "blue": (0.25, 0.25, 1.0)}


def tinted(folder, label: str, count: int, seed: int) -> list[str]:
    """``count`` pictures of random texture under the label's colour tint."""
    rng = np.random.default_rng(seed)
    (folder / label).mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, size=(rng.integers(90, 160), rng.integers(90, 160), 3)) * np.array(TINTS[label])
        path = folder / label / f"{label}-{seed}-{i}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def learned(live_worker, worker_settings, tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    for n, label in enumerate(TINTS):
        tinted(root / "examples", label, 6, seed=n)
    head = root / "tints.head.json"
    result = imgq_cli(worker_settings, "learn", str(root / "examples"), "-o", str(head), "--no-embedded-redis")
    return root, head, result


@pytest.mark.slow
def test_learn_prints_its_figures_and_writes_the_head(learned, worker_settings):
    root, head, result = learned
    assert "Learning 3 labels from 18 examples: blue (6), green (6), red (6)" in result.output
    assert "Cross-validated accuracy:" in result.output and "recall" in result.output
    assert "WARNING: learned on the features of random weights" in result.output
    data = json.loads(head.read_text())
    assert data["labels"] == ["blue", "green", "red"] and data["base_model"] == "resnet50"
    assert data["feature_layer"] == "avg_pool" and data["weights"].startswith("random:0")
    assert data["figures"]["cv_accuracy"] >= 0.9 and data["examples"] == {"blue": 6, "green": 6, "red": 6}
    # the learn job's feature dumps are not left behind (other jobs of the session's worker may have theirs)
    job = re.search(r"^Job (\w+): ", result.output, flags=re.MULTILINE)[1]
    assert not os.path.exists(os.path.join(worker_settings.effective_dump_root, job))


@pytest.mark.slow
def test_the_workers_apply_the_head_in_the_same_pass_and_answer_known_images_with_it(learned, worker_settings):
    root, head, _ = learned
    held_out = {label: tinted(root / "held-out", label, 4, seed=10 + n) for n, label in enumerate(TINTS)}
    store = ResultStore.from_settings(worker_settings)
    jobs = []
    for _ in range(2):  # the second job answers every image from the head's content-hash index
        job = imgq_cli(worker_settings, "submit", str(root / "held-out"), "--head", str(head), "--skip-known",
                       "--top-k", "2").stdout.strip().splitlines()[0]
        wait_until_done(store, job, timeout=300)
        jobs.append(job)
    for job, known in zip(jobs, (False, True), strict=True):
        records = list(store.iter_records(job))
        assert len(records) == 12 and all(r.ok and r.known == known for r in records)
        right = sum(r.head["top_k"][0]["label"] == os.path.basename(os.path.dirname(r.path)) for r in records)
        assert right >= 11, [(r.path, r.head) for r in records]
        assert all(r.head["name"] == "tints" and len(r.head["top_k"]) == 2 for r in records)
        assert not os.path.exists(os.path.join(worker_settings.effective_dump_root, job))  # no dump unless asked
    assert {r.path for r in store.iter_records(jobs[0])} == {p for paths in held_out.values() for p in paths}


@pytest.mark.slow
def test_a_head_of_another_model_is_refused_at_submit(learned, worker_settings, tmp_path):
    root, head, _ = learned
    other = tmp_path / "other.head.json"
    other.write_text(json.dumps({**json.loads(head.read_text()), "base_model": "efficientnetv2b0"}))
    result = imgq_cli(worker_settings, "submit", str(root / "examples"), "--head", str(other), check=False)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: The head 'tints' was learned on model efficientnetv2b0; this job runs resnet50. Learn it again on "
        "resnet50 (`imgq learn`), or submit with the head's model."]
    changed = tmp_path / "weights.head.json"
    changed.write_text(json.dumps({**json.loads(head.read_text()), "weights": "imagenet"}))
    result = imgq_cli(worker_settings, "submit", str(root / "examples"), "--head", str(changed), check=False)
    assert result.exit_code == 1 and "the live workers of resnet50 run random:0" in result.output


@pytest.mark.slow
def test_learn_refuses_too_few_examples_in_one_line(worker_settings, tmp_path):
    tinted(tmp_path / "ex", "red", 6, seed=1)
    tinted(tmp_path / "ex", "blue", 2, seed=2)
    result = imgq_cli(worker_settings, "learn", str(tmp_path / "ex"), "-o", str(tmp_path / "h.json"), check=False)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {tmp_path / 'ex' / 'blue'} has 2 images; a label needs at least 5."]
    assert not (tmp_path / "h.json").exists()


@pytest.mark.slow
def test_learn_names_no_results_file_it_removes(learned):
    """learn reads the examples' records from a file of its own and removes it once read: the summary it shares
    with classify does not print that file as the results (issue 25 item 17c)."""
    _, _, result = learned
    named = [line.partition(": ")[2] for line in result.output.splitlines() if line.startswith("Results: ")]
    assert [path for path in named if not os.path.exists(path)] == []
    assert "imgq-learn-" not in result.output


@pytest.mark.slow
def test_classify_summary_counts_the_heads_labels_at_or_above_min_score(learned, worker_settings, tmp_path):
    """`imgq classify --head H --min-score S`: the summary's top labels are the head's, counted as the results
    file holds them (the best head label at or above S), not the base model's (issue 25 item 17d)."""
    root, head, _ = learned
    out = tmp_path / "tints.jsonl"
    result = imgq_cli(worker_settings, "classify", str(root / "examples"), "--head", str(head), "--min-score",
                      "0.9", "-o", str(out), "--no-embedded-redis")
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    best = Counter(r["head"]["top_k"][0]["label"] for r in exported if r.get("head", {}).get("top_k"))
    line = next(line for line in result.output.splitlines() if line.startswith("Top labels"))
    assert line.startswith("Top labels (head tints): ")
    shown = dict(re.findall(r"([\w-]+) \((\d+)\)", line.partition(": ")[2]))
    assert {label: int(n) for label, n in shown.items()} == dict(best) and set(best) <= set(TINTS)
    below = len(exported) - sum(best.values())
    assert (f"{below} with no label at or above --min-score 0.9" in result.output) == (below > 0)
