"""`imgq tag`: labels into XMP sidecars, read back with exiftool (an independent XMP reader), against a real Redis
(records written through the store directly: no worker, no model)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess

import pytest

from imgq.contract import error_record, ok_record
from producer.tags import sidecars
from producer.tags.sidecars import HIERARCHICAL, SUBJECT, TAGS_LIST, SidecarError
from producer.tags.tagging import TagOptions, UntrainedWeights, tag_records
from tests.imagegen import save
from tests.jobs import commit_job

TRAINED = "file:test.weights.h5:sha256:" + "ab" * 32
# Weights that look trained: records made with them may be tagged (random ones may not).

needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None,
                                    reason="exiftool (Debian's libimage-exiftool-perl) is not installed; "
                                           "`make install-test` installs it when run as root")

DARKTABLE = b"""<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
   xmp:Rating="3"
   xmpMM:DerivedFrom="0.jpg"
   darktable:xmp_version="5"
   darktable:history_end="1">
   <dc:subject>
    <rdf:Bag>
     <rdf:li>holiday</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>places|holiday</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
   <darktable:history>
    <rdf:Seq>
     <rdf:li
      darktable:num="0"
      darktable:operation="exposure"
      darktable:enabled="1"
      darktable:modversion="6"
      darktable:params="0000000000000000"
      darktable:multi_name=""
      darktable:multi_priority="0"/>
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""
# A sidecar as darktable writes it: a rating, someone else's keyword, an edit history.

EXIFTOOL = b"""<?xml version='1.0' encoding='UTF-8'?>
<x:xmpmeta xmlns:x='adobe:ns:meta/' x:xmptk='Image::ExifTool 12.57'>
<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>

 <rdf:Description rdf:about=''
  xmlns:dc='http://purl.org/dc/elements/1.1/'>
  <dc:subject>
   <rdf:Bag>
    <rdf:li>holiday</rdf:li>
   </rdf:Bag>
  </dc:subject>
 </rdf:Description>

 <rdf:Description rdf:about=''
  xmlns:xmp='http://ns.adobe.com/xap/1.0/'>
  <xmp:Rating>3</xmp:Rating>
 </rdf:Description>
</rdf:RDF>
</x:xmpmeta>
"""
# One rdf:Description per namespace, single quotes: how exiftool writes.

LIGHTROOM = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000 1.000000, 0000/00/00-00:00:00        ">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
   xmp:Rating="3"
   crs:Exposure2012="+0.50"/>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>""".encode()
# An xpacket-wrapped packet whose only rdf:Description is empty (attributes only), as Lightroom's can be.

EMPTY_BAG = b"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
 xmp:Rating="3"><dc:subject><rdf:Bag/></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>"""
# No line breaks to follow, and an empty array written as <rdf:Bag/>.


def exiftool(path) -> dict:
    """What exiftool reads from a sidecar: the keyword fields as lists, the rating, darktable's properties."""
    out = subprocess.run(["exiftool", "-j", "-struct", "-Subject", "-HierarchicalSubject", "-TagsList", "-Rating",
                          "-XMP-darktable:all", str(path)], capture_output=True, text=True, check=True).stdout
    found = json.loads(out)[0]
    found.pop("SourceFile")
    for key in ("Subject", "HierarchicalSubject", "TagsList"):
        if key in found and not isinstance(found[key], list):
            found[key] = [found[key]]
    return found


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.suffix != ".xmp"}


def top(*pairs):
    return [{"wnid": f"n{i:08d}", "label": label, "score": score} for i, (label, score) in enumerate(pairs)]


def store_job(store, images: list[tuple[str, list | None]], job="job1", weights=TRAINED) -> str:
    """A finished job whose records are written through the store, as a worker would: (path, top_k or None
    for an image that failed)."""
    commit_job(store, job, [path for path, _ in images], name="photos")
    store.record_results(job, [
        ok_record(job, i, path, labels, weights=weights) if labels is not None
        else error_record(job, i, path, "corrupt", "truncated", weights=weights)
        for i, (path, labels) in enumerate(images)])
    return job


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        save(folder / f"{i}.jpg", seed=i)
    return folder


@needs_exiftool
def test_tag_merges_is_idempotent_and_removes_exactly_its_own(run, store, photos):
    (photos / "0.jpg.xmp").write_bytes(DARKTABLE)
    labels = top(("golden_retriever", 0.8), ("tench", 0.15), ("goldfish", 0.01))
    job = store_job(store, [(str(photos / "0.jpg"), labels),
                            (str(photos / "1.jpg"), top(("tench", 0.6))),
                            (str(photos / "2.jpg"), None)])
    images = digests(photos)
    before = exiftool(photos / "0.jpg.xmp")

    result = run("tag", job, "--top", "2", "--min-score", "0.1")
    assert result.exit_code == 0, result.output
    assert "1 created, 1 changed" in result.output and "1 image without labels" in result.output
    merged = exiftool(photos / "0.jpg.xmp")
    assert merged["Subject"] == ["holiday", "golden retriever", "tench"]
    assert merged["HierarchicalSubject"] == ["places|holiday", "imgq|golden retriever", "imgq|tench"]
    assert merged["TagsList"] == ["imgq/golden retriever", "imgq/tench"]
    assert {k: v for k, v in merged.items() if k not in ("Subject", "HierarchicalSubject", "TagsList")} == \
        {k: v for k, v in before.items() if k not in ("Subject", "HierarchicalSubject")}
    assert merged["Rating"] == 3 and merged["History"][0]["Operation"] == "exposure"
    created = exiftool(photos / "1.jpg.xmp")
    assert (created["Subject"], created["HierarchicalSubject"], created["TagsList"]) == \
        (["tench"], ["imgq|tench"], ["imgq/tench"])
    assert not (photos / "2.jpg.xmp").exists()

    written = {p.name: p.read_bytes() for p in photos.glob("*.xmp")}
    again = run("tag", job, "--top", "2", "--min-score", "0.1")
    assert again.exit_code == 0 and "0 created, 0 changed" in again.output and "2 unchanged" in again.output
    assert {p.name: p.read_bytes() for p in photos.glob("*.xmp")} == written

    removed = run("tag", job, "--remove")
    assert removed.exit_code == 0, removed.output
    assert exiftool(photos / "0.jpg.xmp") == before
    assert (photos / "0.jpg.xmp").read_bytes() == DARKTABLE  # byte for byte as darktable wrote it
    assert not (photos / "1.jpg.xmp").exists()  # imgq created it and it holds nothing now
    assert digests(photos) == images


@needs_exiftool
@pytest.mark.parametrize("original", [DARKTABLE, EXIFTOOL, LIGHTROOM, EMPTY_BAG, DARKTABLE.replace(b"\n", b"\r\n")],
                         ids=["darktable", "exiftool", "lightroom", "empty-bag", "crlf"])
def test_other_writers_sidecars_survive_a_round_trip(original, tmp_path):
    path = tmp_path / "a.xmp"
    path.write_bytes(original)
    before = {k: v for k, v in exiftool(path).items() if v != [""]}  # exiftool reads <rdf:Bag/> as [""]
    packet = sidecars.parse(original)
    path.write_bytes(sidecars.edit(packet, {}, {SUBJECT: ["tench & chips"], HIERARCHICAL: ["imgq|tench & chips"],
                                                TAGS_LIST: ["imgq/tench & chips"]}))
    tagged = exiftool(path)
    assert tagged["Subject"] == before.get("Subject", []) + ["tench & chips"]
    assert tagged["TagsList"] == ["imgq/tench & chips"] and tagged["Rating"] == 3
    back = sidecars.edit(sidecars.parse(path.read_bytes()), {SUBJECT: {"tench & chips"},
                                                             HIERARCHICAL: {"imgq|tench & chips"},
                                                             TAGS_LIST: {"imgq/tench & chips"}}, {})
    path.write_bytes(back)
    assert exiftool(path) == before
    if original is not LIGHTROOM and original is not EMPTY_BAG:  # those two had no room for an element
        assert back == original


def test_stem_names_the_sidecar_as_lightroom_does(run, store, photos):
    job = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9)))])
    assert run("tag", job, "--sidecar-name", "stem").exit_code == 0
    assert (photos / "0.xmp").exists() and not (photos / "0.jpg.xmp").exists()
    assert sidecars.parse((photos / "0.xmp").read_bytes()).keywords(TAGS_LIST) == ["imgq/tench"]


def test_untrained_weights_are_refused_unless_allowed(run, store, photos):
    job = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9)))],
                    weights="random:0 (untrained: labels are meaningless)")
    result = run("tag", job)
    assert result.exit_code == 1 and "untrained weights" in result.output and "--allow-untrained" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not list(photos.glob("*.xmp"))
    assert run("tag", job, "--allow-untrained").exit_code == 0 and (photos / "0.jpg.xmp").exists()
    assert run("tag", job, "--remove").exit_code == 0 and not (photos / "0.jpg.xmp").exists()  # undoing needs no flag


def test_a_sidecar_that_cannot_be_parsed_is_reported_and_left_alone(run, store, photos):
    broken = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF'
    (photos / "0.jpg.xmp").write_bytes(broken)
    job = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9))), (str(photos / "1.jpg"), top(("cock", 0.9)))])
    result = run("tag", job)
    assert result.exit_code == 1 and "0.jpg.xmp" in result.output and "not well-formed" in result.output
    assert (photos / "0.jpg.xmp").read_bytes() == broken
    assert sidecars.parse((photos / "1.jpg.xmp").read_bytes()).keywords(SUBJECT) == ["cock"]


def test_dry_run_prints_the_changes_and_writes_nothing(run, store, photos):
    (photos / "0.jpg.xmp").write_bytes(DARKTABLE)
    job = store_job(store, [(str(photos / "0.jpg"), top(("golden_retriever", 0.9))),
                            (str(photos / "1.jpg"), top(("tench", 0.9)))])
    result = run("tag", job, "--dry-run")
    assert result.exit_code == 0
    assert f"{photos / '0.jpg.xmp'}: would change: +golden retriever" in result.output
    assert f"{photos / '1.jpg.xmp'}: would create: +tench" in result.output
    assert (photos / "0.jpg.xmp").read_bytes() == DARKTABLE and not (photos / "1.jpg.xmp").exists()


def test_a_new_classification_replaces_imgqs_keywords_and_keeps_others(run, store, photos):
    (photos / "0.jpg.xmp").write_bytes(DARKTABLE.replace(b"places|holiday", b"animals|tench"))
    first = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9)))], job="first")
    second = store_job(store, [(str(photos / "0.jpg"), top(("goldfish", 0.9)))], job="second")
    assert run("tag", first).exit_code == 0 and run("tag", second).exit_code == 0
    packet = sidecars.parse((photos / "0.jpg.xmp").read_bytes())
    # "tench" is also the leaf of someone else's keyword, animals|tench: it stays when imgq's tench goes.
    assert packet.keywords(SUBJECT) == ["holiday", "tench", "goldfish"]
    assert packet.keywords(HIERARCHICAL) == ["animals|tench", "imgq|goldfish"]
    assert run("tag", second, "--remove", "--prefix", "other").exit_code == 0  # not its prefix: nothing goes
    assert sidecars.parse((photos / "0.jpg.xmp").read_bytes()).keywords(TAGS_LIST) == ["imgq/goldfish"]


def test_a_keyword_field_that_is_not_an_array_is_refused():
    text = DARKTABLE.replace(b"<dc:subject>\n    <rdf:Bag>\n     <rdf:li>holiday</rdf:li>\n    </rdf:Bag>\n"
                             b"   </dc:subject>", b"<dc:subject>holiday</dc:subject>")
    with pytest.raises(SidecarError, match="dc:subject is not an array"):
        sidecars.parse(text)


def test_bad_prefix_is_a_usage_error(run, store, photos):
    job = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9)))])
    result = run("tag", job, "--prefix", "a|b")
    assert result.exit_code == 2 and "--prefix" in result.output


@pytest.mark.parametrize("score", ["nan", "inf", "-0.1", "1.5", "1e400"])
def test_min_score_outside_0_to_1_is_a_usage_error_and_touches_nothing(run, store, photos, score):
    (photos / "0.jpg.xmp").write_bytes(DARKTABLE)
    job = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9)))])
    assert run("tag", job).exit_code == 0
    tagged = (photos / "0.jpg.xmp").read_bytes()
    result = run("tag", job, "--min-score", score)  # nan chose no label: imgq's keywords were all removed
    assert result.exit_code == 2 and "--min-score" in result.output and "Traceback" not in result.output
    assert (photos / "0.jpg.xmp").read_bytes() == tagged
    with pytest.raises(ValueError, match="minimum score"):
        TagOptions(min_score=float(score))


def test_results_min_score_drops_the_labels_under_it(run, store, photos):
    job = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.8), ("goldfish", 0.15), ("cock", 0.05))),
                            (str(photos / "1.jpg"), None)])
    lines = run("results", job, "--min-score", "0.1").output.splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert [t["label"] for t in records[0]["top_k"]] == ["tench", "goldfish"] and records[1]["status"] == "error"
    rows = run("results", job, "--format", "csv", "--min-score", "0.5").output.splitlines()
    header, first = rows[0].split(","), rows[1].split(",")
    assert first[header.index("label_1")] == "tench" and first[header.index("label_2")] == ""
    assert [t["label"] for t in next(store.iter_results(job))["top_k"]] == ["tench", "goldfish", "cock"]


def test_tag_records_is_a_library_function_for_classify(store, photos):
    job = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9), ("goldfish", 0.2))),
                            (str(photos / "1.jpg"), top(("cock", 0.05))), (str(photos / "2.jpg"), None)])
    seen = []
    options = TagOptions(top=2, min_score=0.1, dry_run=True)
    summary = tag_records(store.iter_records(job), options, on_change=seen.append)
    assert [(c.state, c.added) for c in summary.changes] == [("created", ("tench", "goldfish")), ("unchanged", ())]
    assert seen == summary.changes and summary.skipped_errors == 1 and not list(photos.glob("*.xmp"))
    with pytest.raises(UntrainedWeights):
        tag_records([dataclasses.replace(next(store.iter_records(job)), weights="random:1")], TagOptions())
    with pytest.raises(ValueError, match="prefix"):
        TagOptions(prefix="")


def test_help(run):
    result = run("tag", "--help")
    assert result.exit_code == 0 and "--sidecar-name" in result.output


def test_keywords_inside_other_structures_and_untouched_empty_fields_stay_as_written():
    original = b"""<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/">
 <xmpMM:Pantry><rdf:Bag><rdf:li><rdf:Description><dc:subject><rdf:Bag><rdf:li>inner</rdf:li></rdf:Bag></dc:subject>
 </rdf:Description></rdf:li></rdf:Bag></xmpMM:Pantry>
 <dc:subject/>
</rdf:Description></rdf:RDF>"""
    packet = sidecars.parse(original)
    assert packet.keywords(SUBJECT) == []  # the Pantry's dc:subject describes another resource
    tagged = sidecars.edit(packet, {}, {TAGS_LIST: ["imgq/tench"]})
    assert sidecars.parse(tagged).keywords(TAGS_LIST) == ["imgq/tench"] and b"<dc:subject/>" in tagged
    assert sidecars.edit(sidecars.parse(tagged), {TAGS_LIST: {"imgq/tench"}}, {}) == original


def test_an_object_in_a_store_is_skipped_and_nothing_is_written_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a sidecar "beside" s3://b/x.jpg would be the relative path s3:/b/x.jpg.xmp
    record = ok_record("job1", 0, "s3://b/album/x.jpg", top(("beagle", 0.9)), weights=TRAINED)
    summary = tag_records([record], TagOptions())
    assert [(c.path, c.state) for c in summary.changes] == [("s3://b/album/x.jpg", "skipped")]
    assert "local files only" in summary.changes[0].message and list(tmp_path.iterdir()) == []
