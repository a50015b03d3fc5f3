"""What the CLI prints on a terminal holds no control character (issue 25.15): a file, folder, job or label name
may carry an escape sequence (OSC 0 retitles the terminal, CSI 2J clears it), and every command strips C0 and
C1 control characters from the names it prints (imgq/text.py ``printable``), errors included. Machine formats
(JSONL, CSV, Parquet, --json) stay exact: they are data, and JSON escapes control characters anyway."""

from __future__ import annotations

import json
import os

import pytest

from imgq.contract import ok_record
from imgq.text import printable
from tests.imagegen import save
from tests.jobs import commit_job

OSC = "\x1b]0;pwned\x07"  # sets the terminal's title
CSI = "\x1b[2J"  # clears the screen
TOP = [{"wnid": "n01440764", "label": "tench", "score": 0.75}]


def clean(text: str) -> bool:
    """No control character but line ends."""
    return not any((ord(c) < 32 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in text)


@pytest.mark.parametrize(("text", "shown"), [
    (f"a{OSC}b", "a]0;pwnedb"), (f"{CSI}x", "[2Jx"), ("csi\x9b31m", "csi31m"), ("nel\x85del\x7f", "neldel"),
    ("tab\there\nnew\rline\0", "tabherenewline"), ("café 日本 📷 ÿ", "café 日本 📷 ÿ"),
    (os.fsdecode(b"raw\x9bc1\xe9"), os.fsdecode(b"rawc1\xe9"))])
def test_printable_strips_c0_c1_and_del_and_keeps_the_rest(text, shown):
    assert printable(text) == shown


@pytest.fixture
def hostile(tmp_path):
    """A folder whose name holds an OSC sequence, with a photo and a file that is not an image (itself named
    with a CSI sequence, and an extension holding one)."""
    folder = tmp_path / f"photos{OSC}"
    folder.mkdir()
    save(folder / "a.jpg")
    (folder / f"notes{CSI}.t{CSI}xt").write_text("not an image")
    return folder


def test_submit_and_status_print_names_without_control_characters(run, hostile):
    submitted = run("submit", str(hostile), "--verbose", "--name", f"trip{OSC}")
    assert submitted.exit_code == 0, submitted.output
    job = submitted.stdout.strip()
    assert "skipped: " in submitted.stderr and "notes[2J" in submitted.stderr and clean(submitted.stderr)
    table = run("status")
    assert "trip]0;pwned" in table.stdout and clean(table.output)
    one = run("status", job)
    assert "trip]0;pwned" in one.stdout and ".t[2Jxt" in one.stdout and clean(one.output)
    as_json = run("status", job, "--json")  # data: exact, as JSON escapes it
    data = json.loads(as_json.stdout)
    assert data["name"] == f"trip{OSC}" and data["skipped_kinds"] == f"1 .t{CSI}xt"


def test_results_say_where_they_wrote_without_control_characters_and_keep_the_data_exact(run, store, hostile,
                                                                                           tmp_path):
    path = str(hostile / "a.jpg")
    commit_job(store, "job1", [path])
    store.mark_started("job1")
    store.record_results("job1", [ok_record("job1", 0, path, TOP, weights="imagenet")])
    out = tmp_path / f"labels{OSC}.jsonl"
    written = run("results", "job1", "-o", str(out))
    assert written.exit_code == 0 and "Wrote 1 records to " in written.stderr and clean(written.output)
    assert json.loads(out.read_text())["path"] == path
    as_csv = run("results", "job1", "--format", "csv")
    assert path in as_csv.stdout  # a CSV cell is data: the path as it is


def test_tag_dry_run_lists_sidecars_without_control_characters(run, store, hostile):
    path = str(hostile / "a.jpg")
    commit_job(store, "job1", [path])
    store.mark_started("job1")
    store.record_results("job1", [ok_record("job1", 0, path, TOP, weights="imagenet")])
    listed = run("tag", "job1", "--dry-run")
    assert listed.exit_code == 0, listed.output
    assert b"photos]0;pwned/a.jpg.xmp: would create: +tench" in listed.stdout_bytes and clean(listed.output)


def test_errors_naming_a_path_hold_no_control_characters(run, hostile, tmp_path):
    missing = tmp_path / f"models{OSC}" / "mine"
    refused = run("submit", str(hostile), "--model", str(missing))
    assert refused.exit_code == 2 and "no such model folder" in refused.stderr and clean(refused.output)
    refused = run("classify", str(hostile), "--weights", str(tmp_path / f"w{CSI}.weights.h5"))
    assert refused.exit_code == 2 and "w[2J.weights.h5" in refused.stderr and clean(refused.output)


def test_classify_summary_prints_labels_and_paths_without_control_characters(store, settings, capsys, tmp_path):
    from producer.local.classify import _print_summary

    commit_job(store, "job1", ["/p/a.jpg"])
    store.mark_started("job1")
    top = [{"wnid": "", "label": f"cat{OSC}", "score": 0.9}]
    store.record_results("job1", [ok_record("job1", 0, "/p/a.jpg", top, weights="imagenet")])
    _print_summary(store, store.status("job1"), str(tmp_path / f"out{CSI}.jsonl"))
    said = capsys.readouterr().err
    assert "Top labels: cat]0;pwned (1)" in said and "out[2J.jsonl" in said and clean(said)


def test_schedule_list_and_show_print_paths_without_control_characters(run, hostile):
    added = run("schedule", "add", "trips", str(hostile), "--every", "1h")
    assert added.exit_code == 0, added.output
    for listed in (run("schedule", "list"), run("schedule", "show", "trips")):
        assert "photos]0;pwned" in listed.stdout and clean(listed.output)
