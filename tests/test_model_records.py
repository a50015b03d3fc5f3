"""Everything downstream follows the model: records name it and carry its class names, the store, the exports
and the known-image index keep them apart, schedules route their ticks and keep their scan state by model.
Against a real Redis; records are written as a worker writes them (no worker here)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from imgq.contract import MODEL_NAME, TASK_SCHEDULED_SCAN, Label, ResultRecord, ok_record
from imgq.jobs import submit as submission
from imgq.results.known import KnownImages, model_tag
from imgq.schedules.scan_state import ScanState
from imgq.schedules.schedule import ScheduleBook
from producer.exports.export import write_csv, write_jsonl
from producer.exports.parquet import write_parquet
from tests import imagegen
from tests.processes import imgq_cli

FLOWERS = ("daisy", "rose", "tulip")
FLOWERS_ID = "flowers@sha256:0123456789ab"


def flower_labels(*ranked: tuple[int, float]) -> list[Label]:
    """A user model's top-k as its worker writes it: class names from labels.txt, with their index."""
    return [Label("", FLOWERS[i], score, i) for i, score in ranked]


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        imagegen.save(folder / f"{i}.png", size=(16, 16), seed=i)
    return folder


def test_a_user_models_labels_have_a_name_and_an_index_and_no_wnid():
    label = Label("", "rose", 0.75, 1)
    assert label.to_dict() == {"label": "rose", "index": 1, "score": 0.75}
    assert Label.from_dict(label.to_dict()) == label
    imagenet = Label("n01440764", "tench", 0.5)
    assert imagenet.to_dict() == {"wnid": "n01440764", "label": "tench", "score": 0.5}  # as it always was
    assert Label.from_dict(imagenet.to_dict()) == imagenet


def test_the_store_keeps_a_user_models_labels_and_model_id(settings, store, photos):
    paths = sorted(str(p) for p in photos.iterdir())
    job = submission.submit(paths, settings=settings, store=store, model="flowers").job
    records = [ok_record(job, i, path, flower_labels((2, 0.625), (0, 0.25), (1, 0.125)), model=FLOWERS_ID,
                         weights="flowers.keras", precision="fp32", runtime="tensorflow", worker="w@h",
                         decode_ms=1.5, inference_ms=2.25)
               for i, path in enumerate(paths)]
    assert store.status(job).model_ids == ()  # no worker has answered yet
    store.record_results(job, records)
    assert store.status(job).model_ids == (FLOWERS_ID,)
    assert list(store.iter_records(job)) == records
    assert store.record(job, 1) == records[1]
    first = next(store.iter_results(job))
    assert first["model"] == FLOWERS_ID and first["top_k"][0] == {"label": "tulip", "index": 2, "score": 0.625}


def test_a_user_models_record_packs_as_small_as_an_imagenet_one(settings, store, photos):
    """Class indices and float32 scores, the names kept once per provenance in the job's hash: a user's model's
    record costs what an ImageNet record does, not its JSON (339 bytes for five labels)."""
    from imgq.results import packing

    user = ok_record("j", 0, "/a", flower_labels((2, 0.5), (0, 0.25), (1, 0.125)), model=FLOWERS_ID,
                     decode_ms=1.5, inference_ms=2.25)
    imagenet = ok_record("j", 0, "/a", [Label("n01440764", "tench", 0.5)] * 3, decode_ms=1.5, inference_ms=2.25)
    assert len(packing.pack(user)) == len(packing.pack(imagenet)) < 40
    assert packing.classes(user) == {2: "tulip", 0: "daisy", 1: "rose"}


def test_class_names_first_seen_later_and_renamed_classes_round_trip(settings, store, photos):
    """A class first written while a reader is part-way through the job is read from the job's hash then; a
    class renamed under the same index (labels.txt edited, same model file and worker) keeps both names: those
    records carry theirs."""
    paths = [str(photos / "0.png")] * 40  # 40 one-image batches: the reader reads them 33 at a time
    job = submission.submit(paths, settings=settings, store=store, model="flowers", batch_size=1).job
    first = [ok_record(job, i, paths[i], flower_labels((0, 0.75)), model=FLOWERS_ID) for i in range(38)]
    store.record_results(job, first)
    records = store.iter_records(job)
    assert next(records) == first[0]  # the job's hash is read: it names class 0 only
    later = ok_record(job, 38, paths[38], flower_labels((1, 0.5), (2, 0.25)), model=FLOWERS_ID)
    renamed = ok_record(job, 39, paths[39], [Label("", "marguerite", 0.5, 0)], model=FLOWERS_ID)
    store.record_results(job, [later])
    store.record_results(job, [renamed])
    assert list(records) == [*first[1:], later, renamed]
    assert store.record(job, 39) == renamed and store.record(job, 0) == first[0]


def test_exports_carry_a_user_models_labels_and_indices(tmp_path):
    records = [ok_record("j", 0, "/a.png", flower_labels((1, 0.5), (2, 0.25)), model=FLOWERS_ID, weights="w"),
               ok_record("j", 1, "/b.png", [Label("n01440764", "tench", 0.5)], weights="w")]
    out = io.StringIO()
    write_csv(records, out, 2)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert (rows[0]["label_1"], rows[0]["index_1"], rows[0]["wnid_1"], rows[0]["model"]) == ("rose", "1", "",
                                                                                             FLOWERS_ID)
    assert (rows[1]["label_1"], rows[1]["index_1"], rows[1]["wnid_1"], rows[1]["model"]) == ("tench", "0",
                                                                                             "n01440764",
                                                                                             MODEL_NAME)
    lines = io.StringIO()
    write_jsonl(records, lines)
    assert [ResultRecord.from_dict(json.loads(line)) for line in lines.getvalue().splitlines()] == records

    import pyarrow.parquet as pq

    from imgq.results.parquet_schema import records as parquet_records

    write_parquet(records, str(tmp_path / "r.parquet"), 2)
    table = pq.read_table(tmp_path / "r.parquet")
    assert table.column("index_1").to_pylist() == [1, 0] and table.column("wnid_1").to_pylist() == [None,
                                                                                                   "n01440764"]
    assert list(parquet_records(table)) == records


def test_min_score_keeps_a_user_models_labels(settings, photos):
    from producer.exports.export import with_min_score

    record = ok_record("j", 0, "/a.png", flower_labels((1, 0.5), (2, 0.25)), model=FLOWERS_ID)
    (kept,) = with_min_score([record], 0.3)
    assert kept.top_k == (Label("", "rose", 0.5, 1),)


def test_the_known_image_index_is_kept_per_model_and_weights(store):
    """A picture classified by one model is not known for another: each model id (with the weights and
    precision) has an index of its own. resnet50's tag is what it was before models were a choice."""
    digest = b"d" * 16
    resnet = KnownImages(store.raw, store.keys, "random:0", "fp32", 5)
    resnet.remember({digest: [(3, 0.5)]})
    other = KnownImages(store.raw, store.keys, "random:0", "fp32", 5, model_id="efficientnetv2b0")
    assert other.lookup([digest]) == {} and resnet.lookup([digest]) == {digest: [(3, 0.5)]}
    assert model_tag("random:0", "fp32") == model_tag("random:0", "fp32", MODEL_NAME)
    assert len({model_tag("random:0", "fp32", m) for m in ("resnet50", FLOWERS_ID, "flowers@sha256:ba9876543210")
                }) == 3


# -- schedules ------------------------------------------------------------------------------------------------


@pytest.fixture
def run(settings):
    return lambda *args: imgq_cli(settings, *args, check=False)


def test_a_schedules_ticks_and_jobs_go_to_its_model(run, settings, store, photos):
    result = run("schedule", "add", "flowerbed", str(photos), "--every", "1h", "--model", "efficientnetv2b0")
    assert result.exit_code == 0 and "model efficientnetv2b0" in result.stderr
    book = ScheduleBook(store, settings)
    entry = book.beat_entry("flowerbed")
    assert entry.task == TASK_SCHEDULED_SCAN
    assert entry.options["queue"] == f"{settings.namespace}.efficientnetv2b0"  # a worker of its model ticks it
    job = run("schedule", "run", "flowerbed").stdout.strip()
    assert store.status(job).model == "efficientnetv2b0" and store.queue_depth("efficientnetv2b0") == 1
    assert "model efficientnetv2b0" in run("schedule", "show", "flowerbed").stdout
    refused = run("schedule", "add", "typo", str(photos), "--every", "1h", "--model", "convnextiny")
    assert refused.exit_code == 2 and "Did you mean: convnexttiny" in refused.stderr


def test_the_scan_state_is_kept_per_model(run, settings, store, photos):
    """Files a schedule's model has classified are new for another model: the schedule changed to another
    model scans them all again, and changed back finds its old model's state where it left it."""
    run("schedule", "add", "p", str(photos), "--every", "1h")
    job = run("schedule", "run", "p").stdout.strip()
    _classify(store, job)
    assert run("schedule", "run", "p").stdout == ""  # nothing new for resnet50
    assert ScanState.from_settings(settings, "p").counts()["known"] == 3
    run("schedule", "add", "p", str(photos), "--every", "1h", "--model", "mobilenetv3large", "--replace")
    job = run("schedule", "run", "p").stdout.strip()
    assert store.status(job).total == 3 and store.status(job).model == "mobilenetv3large"
    _classify(store, job)
    run("schedule", "add", "p", str(photos), "--every", "1h", "--replace")
    assert run("schedule", "run", "p").stdout == ""  # resnet50's state is still there
    run("schedule", "remove", "p")
    assert not list(store.redis.scan_iter(match=f"{settings.namespace}:scan:*"))


def _classify(store, job: str) -> None:
    records = [ok_record(job, image, path, [], weights="w") for m in store.iter_batches(job)
               for image, path in m["images"]]
    store.mark_started(job)
    store.record_results(job, records)
