"""Heads (imgq learn): the examples folder, the fit, the head file, and the head's way through records,
exports, packing and the known index. The end-to-end runs with a real worker are in tests/test_learn.py."""

from __future__ import annotations

import json
import os
import re
import threading

import numpy as np
import pytest

from imgq.contract import BatchMessage, Label, MessageError, ResultRecord, ok_record
from imgq.labels import heads
from imgq.labels.heads import HeadError, read_head, refusal
from imgq.results.known import pack, unpack, unpack_with_head
from imgq.results.packing import pack as pack_record
from imgq.results.packing import provenance
from imgq.results.packing import unpack as unpack_record
from producer import learn
from producer.exports.export import csv_header, csv_row, with_min_score
from tests import imagegen
from worker.batches.heads import LoadedHead


def blobs(labels: dict[str, int], features: int = 64, seed: int = 0) -> learn.Features:
    """Separable feature rows: each label's rows around a mean of its own."""
    rng = np.random.default_rng(seed)
    rows, names = [], []
    for i, (label, n) in enumerate(labels.items()):
        centre = np.zeros(features)
        centre[4 * i:4 * i + 4] = 5.0
        rows += list(centre + rng.normal(0, 1, size=(n, features)) * rng.uniform(0.5, 1.5, size=features))
        names += [label] * n
    return learn.Features(rows, names, "resnet50", "random:0 (untrained: labels are meaningless)", [])


def example_tree(root, counts: dict[str, int]):
    for label, n in counts.items():
        for i in range(n):
            imagegen.save(root / label / f"{i}.jpg", seed=i, size=(40, 30))
    return root


# --- the examples folder -------------------------------------------------------------------------------------

def test_examples_are_one_folder_per_label(tmp_path):
    root = example_tree(tmp_path / "ex", {"beach": 5, "not-beach": 6})
    (root / "beach" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    found = learn.find_examples(str(root))
    assert found.labels == ("beach", "not-beach")
    assert [len(found.images[label]) for label in found.labels] == [5, 6]
    assert found.skipped == [str(root / "beach" / "notes.txt")]


@pytest.mark.parametrize("counts, says", [
    ({}, "has no label folders"),
    ({"beach": 5}, "has one label folder"),
    ({"beach": 5, "sea": 3}, "sea has 3 images"),
    ({"beach": 5, "a|b": 5}, "the folder's name is the label"),
    ({"beach": 5, "a,b": 5}, "the folder's name is the label"),
])
def test_examples_that_cannot_be_learned_say_which_folder(tmp_path, counts, says):
    root = example_tree(tmp_path / "ex", counts)
    root.mkdir(exist_ok=True)
    with pytest.raises(learn.ExamplesError, match="\\A[^\n]*" + says.replace("|", "\\|")):
        learn.find_examples(str(root))


# --- the fit ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels", [{"beach": 12, "city": 9}, {"cat": 8, "dog": 10, "fish": 7}])
def test_the_head_applies_as_the_fitted_pipeline_predicts(labels):
    """The standardisation folded into the head's coefficients gives scikit-learn's own probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = blobs(labels)
    head = learn.fit_head(features, "test", labels)
    assert head.figures["cv_accuracy"] == 1.0 and head.figures["examples"] == sum(labels.values())
    assert head.activation == ("sigmoid" if len(labels) == 2 else "softmax")
    x, y = np.stack(features.rows), np.asarray(features.labels)
    reference = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000)).fit(x, y)
    unseen = np.stack(blobs(labels, seed=1).rows)
    loaded = LoadedHead(head, np.asarray(head.coef).T, np.asarray(head.intercept))
    np.testing.assert_allclose(loaded.scores(unseen), reference.predict_proba(unseen), rtol=1e-6, atol=1e-9)
    assert loaded.top(loaded.scores(unseen[:1])[0], 2)["top_k"][0]["label"] == features.labels[0]


def test_confusion_table_counts_each_label():
    labels = {"beach": 6, "city": 5}
    head = learn.fit_head(blobs(labels), "t", labels)
    lines = learn.confusion_table(head)
    assert lines[1].split()[:3] == ["beach", "6", "0"] and lines[2].split()[:3] == ["city", "0", "5"]


# --- the head file ---------------------------------------------------------------------------------------------

def a_head(**changes):
    labels = {"beach": 6, "city": 5}
    head = learn.fit_head(blobs(labels), "beach", labels)
    return heads.from_dict({**head.to_dict(), **changes})


def test_a_head_file_round_trips_and_its_digest_is_its_content(tmp_path):
    head = a_head()
    learn.write_head(head, str(tmp_path / "beach.head.json"))
    again = read_head(str(tmp_path / "beach.head.json"))
    assert again == head and again.digest == head.digest
    assert a_head(intercept=[0.5]).digest != head.digest


@pytest.mark.parametrize("content, says", [
    (b"not json", "not JSON"),
    (json.dumps({"format": "other"}).encode(), "is not an imgq head"),
    (json.dumps({"format": "imgq-head", "version": 9}).encode(), "head version 9"),
])
def test_files_that_are_not_heads_are_refused_in_one_line(tmp_path, content, says):
    (tmp_path / "h.json").write_bytes(content)
    with pytest.raises(HeadError, match=says) as caught:
        read_head(str(tmp_path / "h.json"))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("changes, says", [
    ({"labels": ["beach"]}, "expected 2 to 1000 distinct labels"),
    ({"labels": ["beach", "beach"]}, "distinct labels"),
    ({"coef": [[float("nan")] * 64]}, "finite"),
    ({"coef": [[1.0] * 64, [1.0] * 64]}, "coefficient rows"),
    ({"activation": "relu"}, "activation"),
    ({"labels": ["beach", "a|b"]}, "'\\|'"),
])
def test_damaged_heads_are_refused(changes, says):
    with pytest.raises(HeadError, match=says):
        a_head(**changes)


@pytest.mark.parametrize("intercept, token", [
    ("[NaN]", "nan"), ("[Infinity]", "inf"), ('["Infinity"]', "inf"), ('["-inf"]', "-inf")])
def test_a_head_with_an_intercept_that_is_not_finite_is_refused_in_one_line(settings, tmp_path, intercept, token):
    """JSON's NaN and Infinity tokens, and strings float() reads as such: each named with its file and field,
    at read (`--head`) as at fetch (a worker), never applied as a NaN score to every image."""
    from tests.processes import imgq_cli

    text = json.dumps(a_head().to_dict())
    file = tmp_path / "beach.head.json"
    file.write_text(re.sub(r'"intercept": \[[^\]]*\]', f'"intercept": {intercept}', text))
    with pytest.raises(HeadError) as caught:
        read_head(str(file))
    assert str(caught.value) == f"{file}: intercept[0] is {token}, not a finite number."
    with pytest.raises(HeadError, match=r"\Ahead 0123: intercept\[0\] is"):
        heads.loads(file.read_bytes(), "head 0123")
    result = imgq_cli(settings, "submit", str(tmp_path), "--head", str(file), check=False)
    assert result.exit_code == 2 and "intercept[0] is" in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if "intercept" in line]) == 1


def test_a_coefficient_that_is_not_finite_is_named_by_its_place():
    coef = [list(row) for row in a_head().coef]
    coef[0][7] = float("inf")
    with pytest.raises(HeadError, match=r"\Ahead: coef\[0\]\[7\] is inf, not a finite number\.\Z"):
        a_head(coef=coef)


def test_a_head_is_never_learned_from_features_that_are_not_finite():
    """A model's NaN features (its outputs not finite for some examples) stop the fit in one line, not in
    scikit-learn's traceback."""
    features = blobs({"beach": 6, "city": 5})
    features.rows[3] = np.full_like(features.rows[3], np.nan)
    with pytest.raises(learn.ExamplesError, match=r"\A[^\n]*not finite"):
        learn.fit_head(features, "beach", {"beach": 6, "city": 5})


@pytest.mark.parametrize("labels", [("beach", "city"), ("cat", "dog", "fish")])
def test_huge_logits_saturate_instead_of_becoming_nan(labels):
    """Features times coefficients that overflow to +-inf (or are merely huge) give probabilities of 0 and 1,
    never inf - inf = NaN, and no overflow on the way."""
    rows = 1 if len(labels) == 2 else len(labels)
    head = heads.Head("big", labels, "resnet50", "imagenet", "avg_pool", "sigmoid" if rows == 1 else "softmax",
                      coef=((1e308,) * 4, (-1e308,) * 4, (0.0,) * 4)[:rows], intercept=(0.0,) * rows)
    loaded = LoadedHead(head, np.asarray(head.coef).T, np.asarray(head.intercept))
    with np.errstate(over="raise", invalid="raise"):
        scores = loaded.scores(np.array([[10.0] * 4, [-10.0] * 4, [1e-300] * 4]))
    assert np.isfinite(scores).all() and np.allclose(scores.sum(axis=1), 1.0)
    expected = [0, 1, 0] if rows > 1 else [1, 0, 1]  # the best label of each row
    assert list(scores.argmax(axis=1)) == expected


@pytest.mark.parametrize("label", ["csi\x9b31m", "del\x7f", "nel\x85", "\x1b]0;pwned\x07"])
def test_head_labels_refuse_every_control_character(label):
    """C1 characters (U+0080-U+009F: U+009B is a CSI in an 8-bit terminal) and DEL as C0 ones: the one label
    rule that model folders' labels.txt follows too (imgq/labels/names.py)."""
    with pytest.raises(HeadError, match="control characters"):
        a_head(labels=["beach", label])


def test_a_fifo_a_folder_and_a_huge_file_are_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    done = threading.Event()

    def read():
        with pytest.raises(HeadError, match="not a regular file"):
            read_head(str(tmp_path / "fifo"))
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(10), "reading a FIFO blocked"
    with pytest.raises(HeadError, match="not a regular file|Is a directory"):
        read_head(str(tmp_path))
    with open(tmp_path / "huge.json", "wb") as file:  # sparse: costs no disk
        file.truncate(heads.MAX_HEAD_BYTES + 1)
    with pytest.raises(HeadError, match="more than the"):
        read_head(str(tmp_path / "huge.json"))
    with pytest.raises(HeadError, match="no such file"):
        read_head(str(tmp_path / "missing.json"))


def test_a_head_of_another_model_or_weights_is_refused():
    head = a_head()
    assert refusal(head, "resnet50", set()) is None
    assert refusal(head, "resnet50", {head.weights, "imagenet"}) is None
    assert "learned on model resnet50; this job runs efficientnetv2b0" in refusal(head, "efficientnetv2b0", set())
    assert "the live workers of resnet50 run imagenet" in refusal(head, "resnet50", {"imagenet"})
    assert head.mismatch("resnet50", "imagenet") and head.mismatch("resnet50", head.weights) is None


# --- the head's way through messages, records and exports ----------------------------------------------------------

def test_a_message_names_its_head_by_digest_only():
    message = BatchMessage("j1", 0, ((0, "/a.jpg"),), 5, head="0123456789abcdef01234567")
    assert BatchMessage.from_dict(message.to_dict()) == message
    for bad in ("../../etc/passwd", "ABC", "0123456789abcdef0123456"):
        with pytest.raises(MessageError):
            BatchMessage.from_dict({**message.to_dict(), "head": bad})


def head_record(**changes) -> ResultRecord:
    head = {"name": "beach", "top_k": [{"label": "beach", "score": 0.875}, {"label": "city", "score": 0.125}]}
    values = {"model": "resnet50", "weights": "imagenet", "precision": "fp32", "runtime": "r", "worker": "w",
              "decode_ms": 1.5, "inference_ms": 2.25, "head": head, **changes}
    image = values.pop("image", 3)
    return ok_record("j1", image, "/p/a.jpg", [Label("n01440764", "tench", 0.5)], **values)


@pytest.mark.parametrize("changes", [{}, {"activations": {"file": "/d/3.npz", "layers": {"avg_pool": [2048]}}},
                                     {"known": True}])
def test_a_record_with_a_head_packs_and_unpacks_whole(changes):
    record = head_record(**changes)
    packed = pack_record(record)
    assert packed[:1] == b"O"  # still the compact form
    again = unpack_record(packed, job="j1", image=3, path="/p/a.jpg", provenance_json=provenance(record))
    assert again == record
    assert ResultRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_min_score_applies_to_the_head_and_csv_names_its_best_label():
    record = head_record()
    (kept,) = with_min_score([record], 0.5)
    assert kept.head["top_k"] == [{"label": "beach", "score": 0.875}]
    assert csv_header(1)[-3:] == ["head", "head_label", "head_score"]
    assert csv_row(record, 1)[-3:] == ["beach", "beach", "0.875"]
    assert csv_row(head_record(head=None), 1)[-3:] == ["", "", ""]


def test_parquet_keeps_the_head(tmp_path):
    import pyarrow.parquet as pq

    from imgq.results import parquet_schema
    from producer.exports.parquet import write_parquet

    write_parquet([head_record(), head_record(head=None)], str(tmp_path / "r.parquet"), 5)
    back = list(parquet_schema.records(pq.read_table(tmp_path / "r.parquet")))
    assert back[0].head == head_record().head and back[1].head is None


def test_the_known_index_of_a_head_keeps_its_labels():
    top, head = [(7, 0.5), (9, 0.25)], [(1, 0.875), (0, 0.125)]
    assert unpack(pack(top)) == top
    assert unpack_with_head(pack(top, head)) == (top, head)


def test_the_report_has_a_section_per_head_label():
    from producer.report.page import _head_sections

    records = [head_record(), head_record(image=4), head_record(head={"name": "beach", "top_k": [
        {"label": "city", "score": 0.75}]})]
    sections = _head_sections(records)
    assert "Head beach: beach (2 images)" in sections and "Head beach: city (1 image)" in sections


def test_tag_files_a_heads_best_labels_under_the_head():
    from producer.tags.tagging import TagOptions, chosen_paths

    paths = chosen_paths(head_record(), TagOptions(top=1))
    assert ("beach", "beach") in paths
    assert ("beach", "city") not in paths and ("beach", "city") in chosen_paths(head_record(), TagOptions(top=2))
    assert not [p for p in chosen_paths(head_record(), TagOptions(min_score=0.9)) if p[0] == "beach"]


def test_classify_refuses_a_head_of_another_model_before_starting_anything(settings, tmp_path):
    from tests.processes import imgq_cli

    learn.write_head(a_head(), str(tmp_path / "beach.head.json"))
    result = imgq_cli(settings, "classify", str(tmp_path), "--model", "efficientnetv2b0", "--head",
                      str(tmp_path / "beach.head.json"), "--no-embedded-redis", check=False)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: The head 'beach' was learned on model resnet50; this job runs efficientnetv2b0. Learn it again on "
        "efficientnetv2b0 (`imgq learn`), or submit with the head's model."]


def test_the_classify_summary_counts_the_heads_labels_at_or_above_min_score(store, capsys):
    """`imgq classify --head H --min-score S` ends with the top labels of the head, counted as its results file
    holds them: each image's best head label at or above S, those with none left counted apart; the base
    model's labels are not the summary's then (issue 25 item 17d). The end-to-end run is in tests/test_learn.py."""
    import collections
    import io
    import re

    from producer.exports.export import writer_for
    from producer.local.classify import _print_summary
    from tests.jobs import commit_job

    heads = [[("beach", 0.95), ("city", 0.05)], [("beach", 0.7), ("city", 0.3)], [("city", 0.92), ("beach", 0.08)],
             [("city", 0.6), ("beach", 0.4)], [("beach", 0.99), ("city", 0.01)]]
    paths = [f"/p/{i}.jpg" for i in range(len(heads))]
    commit_job(store, "jh", paths)
    store.record_results("jh", [
        ok_record("jh", i, path, [Label("n01440764", "tench", 0.5)], weights="imagenet", head={"name": "beach",
                  "top_k": [{"label": label, "score": score} for label, score in top]})
        for i, (path, top) in enumerate(zip(paths, heads, strict=True))])
    out = io.StringIO()
    writer_for("jsonl", 5)(with_min_score(store.iter_records("jh"), 0.9), out)
    exported = [json.loads(line) for line in out.getvalue().splitlines()]
    best = collections.Counter(r["head"]["top_k"][0]["label"] for r in exported if r["head"]["top_k"])
    assert best == {"beach": 2, "city": 1}

    _print_summary(store, store.status("jh"), "out.jsonl", min_score=0.9)
    printed = capsys.readouterr().err.splitlines()
    line = next(line for line in printed if line.startswith("Top labels"))
    assert line == "Top labels (head beach): beach (2), city (1); 2 with no label at or above --min-score 0.9"
    assert dict(re.findall(r"(\w+) \((\d+)\)", line)) == {label: str(n) for label, n in best.items()}
    assert not [line for line in printed if line.startswith("Groups")]  # tench's animal, fish: 0.5, under 0.9
    _print_summary(store, store.status("jh"), "out.jsonl")  # no --min-score: every image's best head label
    printed = capsys.readouterr().err
    assert "Top labels (head beach): beach (3), city (2)\n" in printed and "Groups: animal (5), fish (5)\n" in printed
