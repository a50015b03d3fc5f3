"""`imgq results --format parquet`: records written through the store (no worker), exported with the CLI and
read back with pyarrow."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgq.contract import ResultRecord, error_record, ok_record
from imgq.results.parquet_schema import records as table_records
from producer.exports.parquet import write_parquet
from tests.processes import imgq_cli

K = 3
ODD_PATH = "/photos/caf\udce9.jpg"  # b"/photos/caf\xe9.jpg": a Latin-1 file name, not UTF-8


def labels(*scores: float) -> list[dict]:
    # The worker's scores are float32 probabilities made Python floats.
    names = [("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great_white_shark")]
    return [{"wnid": w, "label": name, "score": float(np.float32(s))}
            for (w, name), s in zip(names, scores, strict=False)]


def example_records(job: str) -> list[ResultRecord]:
    provenance = {"weights": "random:0", "precision": "fp32", "runtime": "keras", "worker": "w1@host"}
    return [
        ok_record(job, 0, "/photos/a.jpg", labels(0.7, 0.2, 0.1), **provenance, decode_ms=3.25, inference_ms=11.5),
        error_record(job, 1, "/photos/b.jpg", "corrupt", "image file is truncated", **provenance, decode_ms=1.5),
        ok_record(job, 2, ODD_PATH, labels(0.5, 0.3), **provenance, known=True),
        ok_record(job, 3, "/photos/ünï.jpg", labels(0.9, 0.05, 0.01), **provenance,
                  activations={"file": f"{job}/3.npz", "dtype": "float16", "bytes": 4096,
                               "layers": {"avg_pool": [2048]}}),
    ]


def finished_job(settings, store, paths: list[str]) -> str:
    listing = settings.state_dir + "-list.txt"  # named files are queued as they are: none need exist
    with open(listing, "w", encoding="utf-8", errors="surrogateescape") as file:
        file.write("".join(f"{p}\n" for p in paths))
    job = imgq_cli(settings, "submit", "--from-file", listing, "--top-k", str(K)).stdout.strip()
    store.mark_started(job)
    store.record_results(job, example_records(job))
    return job


@pytest.fixture
def exported(settings, store, tmp_path):
    job = finished_job(settings, store, [r.path for r in example_records("x")])
    out = tmp_path / "labels.parquet"
    result = imgq_cli(settings, "results", job, "--format", "parquet", "-o", str(out))
    assert f"Wrote 4 records to {out}." in result.stderr
    return job, pq.read_table(out)


def test_schema_has_proper_types(exported):
    _, table = exported
    types = dict(zip(table.schema.names, table.schema.types, strict=True))
    assert types["job"] == pa.string() and types["image"] == pa.int64() and types["path"] == pa.string()
    assert types["path_bytes"] == pa.binary() and pa.types.is_dictionary(types["status"])
    assert [types[f"score_{i}"] for i in (1, 2, 3)] == [pa.float32()] * 3
    assert [types[f"label_{i}"] for i in (1, 2, 3)] == [pa.string()] * 3 and "label_4" not in types
    assert (types["decode_ms"], types["inference_ms"], types["known"]) == (pa.float64(), pa.float64(), pa.bool_())


def test_one_row_per_image_with_the_jsonl_export_values(exported, settings):
    job, table = exported
    jsonl = [json.loads(line) for line in imgq_cli(settings, "results", job).stdout.splitlines()]
    rows = table.to_pylist()
    assert [row["image"] for row in rows] == [0, 1, 2, 3]
    for row, record in zip(rows, jsonl, strict=True):
        assert (row["job"], row["status"], row["weights"], row["precision"], row["runtime"], row["worker"]) == (
            record["job"], record["status"], record["weights"], record["precision"], record["runtime"],
            record["worker"])
        assert (row["decode_ms"], row["inference_ms"], row["known"]) == (
            record["decode_ms"], record["inference_ms"], record.get("known", False))
        for i, label in enumerate(record["top_k"], start=1):
            assert (row[f"label_{i}"], row[f"wnid_{i}"], row[f"score_{i}"]) == (
                label["label"], label["wnid"], label["score"])  # float32 holds the score exactly
    assert [ResultRecord.from_dict(r) for r in jsonl] == list(table_records(table))


def test_error_rows_have_empty_labels_and_an_error(exported):
    _, table = exported
    row = table.to_pylist()[1]
    assert (row["status"], row["error_code"], row["error_message"]) == ("error", "corrupt", "image file is truncated")
    assert [row[f"label_{i}"] for i in (1, 2, 3)] == [None] * 3 and row["score_1"] is None
    assert table.to_pylist()[0]["error_code"] is None


def test_a_path_that_is_not_utf8_round_trips(exported):
    _, table = exported
    rows = table.to_pylist()
    assert rows[2]["path_bytes"] == b"/photos/caf\xe9.jpg" and rows[2]["path"] == "/photos/caf\ufffd.jpg"
    assert (rows[3]["path"], rows[3]["path_bytes"]) == ("/photos/ünï.jpg", None)
    assert rows[2]["label_3"] is None  # two labels of three


def test_parquet_needs_an_output_file(settings):
    result = imgq_cli(settings, "results", "nojob", "--format", "parquet", check=False)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["Error: --format parquet writes a file: give -o FILE."]


def test_row_groups_bound_the_rows_held_at_once(tmp_path):
    out = tmp_path / "many.parquet"
    many = (ok_record("j", i, f"/p/{i}.jpg", labels(0.5), weights="w") for i in range(2500))
    assert write_parquet(many, str(out), k=1, row_group_rows=1000) == 2500
    meta = pq.ParquetFile(out).metadata
    assert (meta.num_rows, meta.num_row_groups) == (2500, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["many.parquet"]  # the temporary file was renamed
