"""ImageNet's classes in WordNet's groups (issue 18 item 3): the vendored table, summed scores, and the groups as
hierarchical keywords read back by exiftool. Records are written through the store (no worker, no model)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from imgq.contract import Label
from imgq.labels import groups
from producer.tags import sidecars
from producer.tags.sidecars import HIERARCHICAL, SUBJECT, TAGS_LIST
from tests.imagegen import save
from tests.test_tag import exiftool, needs_exiftool, store_job

REPO = Path(__file__).resolve().parent.parent
WORDNET = "/usr/share/wordnet"

BORDER_COLLIE, TABBY, AIRLINER = "n02106166", "n02123045", "n02690373"
NORFOLK, NORWICH, CAIRN = "n02094114", "n02094258", "n02096177"  # three terriers


def label(wnid: str, name: str, score: float) -> dict:
    return {"wnid": wnid, "label": name, "score": score}


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        save(folder / f"{i}.jpg", seed=i)
    return folder


def test_known_classes_sit_in_the_groups_people_search_by():
    assert groups.path_of(BORDER_COLLIE) == ("animal", "dog")
    assert groups.path_of(TABBY) == ("animal", "cat")
    assert groups.path_of(AIRLINER) == ("vehicle", "aircraft")
    assert groups.path_of(CAIRN) == ("animal", "dog", "terrier")
    assert groups.path_of("n99999999") == ()
    assert groups.group_path("terrier") == ("animal", "dog", "terrier")
    names = groups.names()
    for wanted in ("animal", "dog", "cat", "bird", "fish", "insect", "vehicle", "aircraft", "food", "fruit",
                   "plant", "building", "furniture", "clothing", "musical instrument"):
        assert wanted in names
    for abstract in ("physical entity", "whole", "instrumentality", "artifact", "object", "organism"):
        assert abstract not in names


def test_a_groups_score_is_the_sum_of_its_classes():
    top_k = [Label(NORFOLK, "Norfolk_terrier", 0.31), Label(NORWICH, "Norwich_terrier", 0.31),
             Label(CAIRN, "cairn", 0.31), Label(TABBY, "tabby", 0.05)]
    found = groups.scores(top_k)
    assert list(found)[:3] == ["animal", "dog", "terrier"]
    assert found["dog"] == pytest.approx(0.93) and found["animal"] == pytest.approx(0.98)
    assert found["cat"] == pytest.approx(0.05) and "vehicle" not in found


def test_the_vendored_table_is_what_the_script_generates_from_wordnet():
    if not os.path.exists(os.path.join(WORDNET, "data.noun")):
        pytest.skip("WordNet 3.0 is not installed (Debian's wordnet-base; `make install-test` installs it as root)")
    spec = importlib.util.spec_from_file_location("wordnet_groups", REPO / "tools" / "wordnet_groups.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    vendored = (REPO / "imgq" / "imagenet_groups.json").read_text(encoding="utf-8")
    assert script.render(script.generate(WORDNET)) == vendored
    assert "Princeton University" in (REPO / "imgq" / "WORDNET_LICENSE").read_text(encoding="utf-8")


@needs_exiftool
def test_tag_writes_paths_through_the_groups_and_exiftool_reads_them_back(run, store, photos):
    job = store_job(store, [(str(photos / "0.jpg"), [label(BORDER_COLLIE, "Border_collie", 0.9)]),
                            (str(photos / "1.jpg"), [label(AIRLINER, "airliner", 0.8)]),
                            (str(photos / "2.jpg"), [label(TABBY, "tabby", 0.7)])])
    assert run("tag", job).exit_code == 0
    collie = exiftool(photos / "0.jpg.xmp")
    assert collie["HierarchicalSubject"] == ["imgq|animal|dog|Border collie"]
    assert collie["TagsList"] == ["imgq/animal/dog/Border collie"] and collie["Subject"] == ["Border collie"]
    assert exiftool(photos / "1.jpg.xmp")["HierarchicalSubject"] == ["imgq|vehicle|aircraft|airliner"]
    assert exiftool(photos / "2.jpg.xmp")["HierarchicalSubject"] == ["imgq|animal|cat|tabby"]

    assert run("tag", job, "--groups", "--prefix", "auto").exit_code == 0  # another prefix: beside imgq's
    both = exiftool(photos / "0.jpg.xmp")
    assert both["HierarchicalSubject"] == ["imgq|animal|dog|Border collie", "auto|animal|dog|Border collie"]
    assert both["Subject"] == ["Border collie", "animal", "dog"]
    assert run("tag", job, "--remove", "--prefix", "auto").exit_code == 0
    assert exiftool(photos / "0.jpg.xmp")["Subject"] == ["Border collie"]  # only what --groups added went


def test_a_group_passes_min_score_when_none_of_its_classes_does(run, store, photos):
    terriers = [label(NORFOLK, "Norfolk_terrier", 0.31), label(NORWICH, "Norwich_terrier", 0.31),
                label(CAIRN, "cairn", 0.31), label(TABBY, "tabby", 0.05)]
    job = store_job(store, [(str(photos / "0.jpg"), terriers)])
    result = run("tag", job, "--min-score", "0.9", "--groups")
    assert result.exit_code == 0, result.output
    packet = sidecars.parse((photos / "0.jpg.xmp").read_bytes())
    assert packet.keywords(HIERARCHICAL) == ["imgq|animal|dog|terrier"]  # dog 0.93, terrier 0.93, animal 0.98
    assert packet.keywords(TAGS_LIST) == ["imgq/animal/dog/terrier"]
    assert packet.keywords(SUBJECT) == ["animal", "dog", "terrier"]
    assert run("tag", job, "--min-score", "0.95").exit_code == 0  # only animal (0.98) reaches it now
    assert sidecars.parse((photos / "0.jpg.xmp").read_bytes()).keywords(HIERARCHICAL) == ["imgq|animal"]


def mixed_job(store, photos) -> str:
    """A collie, three terriers sharing one photo, an airliner and an image that failed."""
    terriers = [label(NORFOLK, "Norfolk_terrier", 0.31), label(NORWICH, "Norwich_terrier", 0.31),
                label(CAIRN, "cairn", 0.31), label(TABBY, "tabby", 0.05)]
    return store_job(store, [(str(photos / "0.jpg"), [label(BORDER_COLLIE, "Border_collie", 0.9)]),
                             (str(photos / "1.jpg"), terriers),
                             (str(photos / "2.jpg"), [label(AIRLINER, "airliner", 0.6)]),
                             (str(photos / "missing.jpg"), None)])


def test_results_groups_in_jsonl_csv_and_parquet(run, store, photos, tmp_path):
    import csv
    import io
    import json

    import pyarrow.parquet as pq

    job = mixed_job(store, photos)
    lines = run("results", job, "--groups", "--min-score", "0.5").output.splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records[1]["top_k"] == []  # no terrier reaches 0.5...
    assert [(g["group"], g["score"]) for g in records[1]["groups"]] == \
        [("animal", 0.98), ("dog", 0.93), ("terrier", 0.93)]  # ...but their groups do; cat (0.05) does not
    assert [g["group"] for g in records[0]["groups"]] == ["animal", "dog"]
    assert records[3]["status"] == "error" and records[3]["groups"] == []
    assert "groups" not in json.loads(run("results", job).output.splitlines()[0])  # only when asked

    rows = list(csv.DictReader(io.StringIO(run("results", job, "--groups", "--format", "csv").output)))
    assert rows[1]["groups"] == "animal;dog;terrier;cat" and rows[1]["group_scores"] == "0.98;0.93;0.93;0.05"
    assert rows[2]["groups"] == "vehicle;aircraft" and rows[3]["groups"] == ""

    out = tmp_path / "r.parquet"
    assert run("results", job, "--groups", "--format", "parquet", "-o", str(out), "--min-score", "0.9").exit_code == 0
    table = pq.read_table(out)
    assert table.column("groups").to_pylist() == [["animal", "dog"], ["animal", "dog", "terrier"], [], []]
    assert table.column("group_scores").to_pylist()[1] == [0.98, 0.93, 0.93]
    assert table.column("label_1").to_pylist()[:3] == ["Border_collie", None, None]


def test_classify_summary_counts_by_group(store, photos, capsys):
    from producer.local.classify import _print_summary

    job = mixed_job(store, photos)
    _print_summary(store, store.status(job), "out.jsonl")
    groups_line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("Groups: "))
    assert groups_line == "Groups: animal (2), dog (2), terrier (1), vehicle (1), aircraft (1)"


def test_report_filters_by_group(run, store, photos, tmp_path):
    job = mixed_job(store, photos)
    out = tmp_path / "dogs.html"
    result = run("report", job, "--group", "dog", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "(2 images, 0 errors)" in result.output
    page = out.read_text(encoding="utf-8")
    assert "0.jpg" in page and "1.jpg" in page and "2.jpg" not in page and "group <b>dog</b>" in page
    assert "(1 image, 0 errors)" in run("report", job, "--group", "aircraft", "-o", str(out)).output
    wrong = run("report", job, "--group", "dogs", "-o", str(out))
    assert wrong.exit_code == 1 and "'dogs' is not a group" in wrong.output and "Traceback" not in wrong.output


def test_the_classify_summary_and_report_group_agree_on_an_images_groups(run, store, photos, tmp_path, capsys):
    """One rule puts an image in a group (imgq.labels.groups.memberships: the group's summed score reaches 0.5):
    the classify summary counts by it and `imgq report --group` selects by it, so they agree on the same
    records, also where the top label's groups and the summed scores part ways (issue 25 item 17e)."""
    import re

    from producer.local.classify import _print_summary

    split = [label(TABBY, "tabby", 0.4), label(NORFOLK, "Norfolk_terrier", 0.2), label(NORWICH, "Norwich_terrier",
             0.2), label(CAIRN, "cairn", 0.2)]  # top label a cat, but dog 0.6
    unsure = [label(BORDER_COLLIE, "Border_collie", 0.3), label(AIRLINER, "airliner", 0.25)]  # dog 0.3 only
    job = store_job(store, [(str(photos / "0.jpg"), split), (str(photos / "1.jpg"), unsure),
                            (str(photos / "2.jpg"), [label(AIRLINER, "airliner", 0.6)])])
    _print_summary(store, store.status(job), "out.jsonl")
    line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("Groups"))
    counted = {group: int(n) for group, n in re.findall(r"(\w[\w ]*?) \((\d+)\)", line.partition(": ")[2])}
    assert counted == {"animal": 1, "dog": 1, "terrier": 1, "vehicle": 1, "aircraft": 1}  # the collie: 0.3
    for group in ("animal", "dog", "terrier", "cat", "vehicle", "aircraft"):
        result = run("report", job, "--group", group, "-o", str(tmp_path / f"{group}.html"))
        assert result.exit_code == 0, result.output
        selected = int(re.search(r"\((\d+) images?, ", result.output)[1])
        assert selected == counted.get(group, 0), (group, result.output)
    # and the histogram of every report counts the images' groups alike
    assert run("report", job, "-o", str(tmp_path / "all.html")).exit_code == 0
    page = (tmp_path / "all.html").read_text(encoding="utf-8")
    histogram = page.partition("<h3>Groups of the images (score at least 0.5)</h3>")[2].partition("</table>")[0]
    assert dict(re.findall(r"<td>([\w ]+)</td><td class=n>(\d+)</td>", histogram)) == {
        group: str(n) for group, n in counted.items()}
