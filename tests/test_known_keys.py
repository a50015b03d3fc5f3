"""What the known-image index (--skip-known) is keyed by: everything that changes a score (issue 25, item 9).

A folder model's id carries its model file's digest only; its manifest (preprocessing, resize, interpolation,
outputs) and the decode settings that change pixels (IMGQ_JPEG_DRAFT) change scores too, and are in the
index's key (imgq.models.spec.scoring_digest). Its labels.txt is not: answers keep class indexes, named when
they are read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from imgq.models.spec import BUILTIN, SCORING_FIELDS, ModelSpec, builtin_spec, scoring_digest
from imgq.results.known import model_tag
from imgq.results.store import ResultStore, delete_namespace
from tests import user_models
from tests.processes import imgq_cli

FOLDER_SPEC = ModelSpec(name="defects", folder="/models/defects", labels=("ok", "scratch"), wnids=None,
                        input_size=(64, 64), channels=3, preprocessing="none", resize="squash",
                        interpolation="nearest", outputs="softmax", feature_layer="pool",
                        file_digest="0123456789ab", model_file="model.keras")
OTHER_VALUES = {"input_size": (96, 96), "channels": 1, "preprocessing": "tf", "resize": "crop",
                "interpolation": "bilinear", "outputs": "logits"}


def tag(spec: ModelSpec, jpeg_draft: bool = True) -> str:
    return model_tag("file:model.keras:sha256:0123456789ab", "fp32", spec.id, scoring=scoring_digest(spec, jpeg_draft))


def test_every_field_that_changes_a_score_changes_the_key():
    assert set(OTHER_VALUES) == set(SCORING_FIELDS)
    changed = {name: tag(dataclasses.replace(FOLDER_SPEC, **{name: value})) for name, value in OTHER_VALUES.items()}
    assert len({tag(FOLDER_SPEC), *changed.values()}) == len(changed) + 1, changed
    assert tag(FOLDER_SPEC, jpeg_draft=False) != tag(FOLDER_SPEC)  # other pixels: a JPEG decoded whole


def test_what_changes_no_score_keeps_the_key():
    """Moving the folder, renaming its classes, another feature layer: the same scores, the same index."""
    same = dataclasses.replace(FOLDER_SPEC, folder="/elsewhere/defects", labels=("fine", "scratched"),
                               feature_layer="dense")
    assert tag(same) == tag(FOLDER_SPEC)


def test_the_built_ins_keep_the_keys_they_had():
    """resnet50's tag is what it was before models were a choice, and every built-in's what it was before the
    scoring digest existed, with the default decoding: their indexes stay valid."""
    assert scoring_digest(builtin_spec("resnet50")) == ""
    assert model_tag("imagenet", "fp32", "resnet50", scoring="") == "68b443520c5b"  # sha1("imagenet|fp32"), as before
    for name in BUILTIN:
        assert scoring_digest(builtin_spec(name)) == "", name
        assert scoring_digest(builtin_spec(name), jpeg_draft=False) != ""  # Keras' exact pixels: an index of its own


LEVELS = (40, 90, 170, 220)


@pytest.mark.slow
def test_a_changed_manifest_is_answered_anew_and_renamed_classes_by_their_new_names(redis_url, tmp_path):
    """A real worker serves a folder model, three times over: as it was saved; with its classes renamed in
    labels.txt (the same scores: answered from the index, under the new names); with another preprocessing in
    imgq-model.toml (other scores: classified anew, never answered with the first run's labels)."""
    from producer.local.workers import LocalWorker
    from tests.conftest import make_settings

    folder = user_models.brightness_folder(tmp_path / "brightness")
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for level in LEVELS:
        user_models.grey_picture(pictures / f"level-{level:03d}.png", level, size=(300, 200), seed=level)
    settings = make_settings(redis_url, tmp_path, model=str(folder), weights="imagenet", runtime="openvino")
    store = ResultStore.from_settings(settings)

    def classify_with_skip_known() -> list[dict]:
        worker = LocalWorker(settings)  # a worker reads its model folder when it starts
        worker.start()
        try:
            worker.wait_ready(store, timeout=240)
            job = imgq_cli(settings, "submit", str(pictures), "--skip-known", "--wait").stdout.strip()
            return sorted(store.iter_results(job), key=lambda r: r["path"])
        finally:
            worker.stop()

    try:
        first = classify_with_skip_known()
        assert [r["top_k"][0]["label"] for r in first] == ["dark", "dark", "bright", "bright"]
        assert not any(r.get("known") for r in first)

        (Path(folder) / "labels.txt").write_text("shadow\nlight\n")
        renamed = classify_with_skip_known()
        assert all(r.get("known") for r in renamed)  # the same model, fed alike: nothing computed again
        assert [r["top_k"][0]["label"] for r in renamed] == ["shadow", "shadow", "light", "light"]
        assert [r["top_k"][0]["score"] for r in renamed] == [r["top_k"][0]["score"] for r in first]

        (Path(folder) / "imgq-model.toml").write_text('name = "brightness"\npreprocessing = "tf"\n')
        refed = classify_with_skip_known()
        assert not any(r.get("known") for r in refed), [r.get("known") for r in refed]
        assert {r["model"] for r in refed} == {r["model"] for r in first}  # the same file: the same id
        # Pixels scaled to -1..1 look dark to a model that expects 0..255: what a fresh run says.
        assert [r["top_k"][0]["label"] for r in refed] == ["shadow"] * len(LEVELS)
    finally:
        delete_namespace(redis_url, settings.namespace)
