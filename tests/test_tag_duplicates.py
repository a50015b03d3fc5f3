"""`imgq tag --duplicates`: the photos alike that `imgq duplicates` finds get an imgq|duplicate keyword, all but
each group's keeper, read back with exiftool; labels and marks each kept by a run that does not ask for them;
nothing deleted or moved. Records and embedding files written directly (no worker), of real photos."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.jobs import write_embeddings
from tests.test_tag import TRAINED, digests, exiftool, needs_exiftool, store_job, top

PHOTOS = Path(__file__).resolve().parent.parent.parent / "shared" / "photos"
pytestmark = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"no shared photos at {PHOTOS}")
UNTRAINED = "random:0 (untrained: labels are meaningless)"


@pytest.fixture
def alike(store, settings, tmp_path):
    """Job ``alike1``: p0 with a byte-for-byte copy and a re-encode (quality 55), p1 with a copy, p2 alone;
    the copies share their original's vector (trained-looking weights: the cosine confirms a same picture)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    sources = sorted(PHOTOS.glob("*.JPEG"))[::60][:3]
    names = []
    for number, source in enumerate(sources):
        picture = Image.open(source).convert("RGB")
        picture.save(folder / f"p{number}.jpg", quality=92)
        names.append(f"p{number}.jpg")
        if number < 2:
            shutil.copyfile(folder / f"p{number}.jpg", folder / f"p{number}-same.jpg")
            names.append(f"p{number}-same.jpg")
        if number == 0:
            picture.save(folder / "p0-q55.jpg", quality=55)
            names.append("p0-q55.jpg")
    paths = [str(folder / name) for name in names]
    job = store_job(store, [(p, top(("tench", 0.9))) for p in paths], job="alike1")
    base = np.random.default_rng(1).normal(size=(3, 64))
    write_embeddings(settings, job, paths, TRAINED, vectors=base[[int(n[1]) for n in names]])
    return job, folder


def marked(folder: Path) -> dict[str, list[str]]:
    """Image name -> the HierarchicalSubject of its sidecar ([] without one), as exiftool reads it."""
    return {p.name: sorted(exiftool(p.with_name(p.name + ".xmp")).get("HierarchicalSubject", []))
            if p.with_name(p.name + ".xmp").exists() else [] for p in sorted(folder.glob("*.jpg"))}


@needs_exiftool
def test_tag_duplicates_marks_all_but_the_keepers_and_keeps_labels_and_marks_apart(run, alike):
    job, folder = alike
    images = digests(folder)
    members = [json.loads(line) for line in run("duplicates", job).stdout.splitlines()]
    others = {os.path.basename(m["path"]) for m in members if not m["keeper"]}
    assert {"p0-same.jpg", "p1-same.jpg"} <= others and {"p0.jpg", "p1.jpg", "p2.jpg"}.isdisjoint(others)
    label = "imgq|tench"

    result = run("tag", job, "--duplicates", "--no-labels")  # the marks alone
    assert result.exit_code == 0, result.output
    assert "2 groups of photos alike: imgq|duplicate for" in result.stderr
    assert marked(folder) == {name: ["imgq|duplicate"] if name in others else [] for name in images}
    assert exiftool(folder / "p0-same.jpg.xmp")["Subject"] == ["duplicate"]
    assert exiftool(folder / "p0-same.jpg.xmp")["TagsList"] == ["imgq/duplicate"]  # digiKam's hierarchy

    assert run("tag", job).exit_code == 0  # the labels: the marks stay
    assert marked(folder) == {name: ["imgq|duplicate", label] if name in others else [label] for name in images}
    again = run("tag", job, "--duplicates")  # both, as they are: nothing to change
    assert again.exit_code == 0 and f"0 created, 0 changed, 0 deleted, {len(images)} unchanged" in again.stderr

    assert run("tag", job, "--duplicates", "--no-labels", "--remove").exit_code == 0  # the marks go, labels stay
    assert marked(folder) == {name: [label] for name in images}
    assert "duplicate" not in exiftool(folder / "p0-same.jpg.xmp")["Subject"]
    assert run("tag", job, "--remove").exit_code == 0 and not list(folder.glob("*.xmp"))

    assert run("tag", job, "--duplicates").exit_code == 0  # both in one run
    assert marked(folder) == {name: ["imgq|duplicate", label] if name in others else [label] for name in images}
    assert run("tag", job, "--remove").exit_code == 0 and not list(folder.glob("*.xmp"))  # --remove: all of imgq's
    assert digests(folder) == images  # no image changed, moved or deleted


def test_a_sidecar_shared_with_a_keeper_is_not_marked(run, store, settings, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    first, second = sorted(PHOTOS.glob("*.JPEG"))[:2]
    for source, names in ((first, ("a.jpg", "a.jpeg")), (second, ("b.jpg", "b-copy.jpg"))):
        for name in names:
            shutil.copyfile(source, folder / name)
    paths = [str(folder / name) for name in ("a.jpg", "a.jpeg", "b.jpg", "b-copy.jpg")]
    job = store_job(store, [(p, top(("tench", 0.9))) for p in paths], job="stems1", weights=UNTRAINED)
    write_embeddings(settings, job, paths, UNTRAINED)
    result = run("tag", job, "--duplicates", "--no-labels", "--sidecar-name", "stem", "--dry-run")
    assert result.exit_code == 0, result.output
    # a.jpeg is not its group's keeper, but a.xmp is also the sidecar of a.jpg, which is: no mark on a.xmp.
    assert result.stdout_bytes.decode().splitlines() == [f"{folder}/b-copy.xmp: would create: +duplicate"]
    assert not list(folder.glob("*.xmp"))


def test_marks_need_no_trained_weights(run, store, settings, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    sources = sorted(PHOTOS.glob("*.JPEG"))[::40][:5]  # a copy of the first, and four other photos
    for name, source in zip("abcdef", sources[:1] + sources, strict=False):
        shutil.copyfile(source, folder / f"{name}.jpg")
    paths = [str(p) for p in sorted(folder.glob("*.jpg"))]
    job = store_job(store, [(p, top(("tench", 0.9))) for p in paths], job="random1", weights=UNTRAINED)
    write_embeddings(settings, job, paths, UNTRAINED)
    refused = run("tag", job, "--duplicates")  # the labels are meaningless
    assert refused.exit_code == 1 and "--allow-untrained" in refused.stderr and not list(folder.glob("*.xmp"))
    result = run("tag", job, "--duplicates", "--no-labels")
    assert result.exit_code == 0, result.output
    assert marked(folder) == {"a.jpg": [], "b.jpg": ["imgq|duplicate"], "c.jpg": [], "d.jpg": [], "e.jpg": [],
                              "f.jpg": []}


def test_a_job_without_embeddings_is_refused_in_one_line_and_nothing_is_written(run, store, settings, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copyfile(sorted(PHOTOS.glob("*.JPEG"))[0], folder / "a.jpg")
    job = store_job(store, [(str(folder / "a.jpg"), top(("tench", 0.9)))], job="plain1")
    result = run("tag", job, "--duplicates")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines() == [f"Error: Job {job} has no embedding files under "
                                          f"{os.path.join(settings.effective_dump_root, job)}: submit it with "
                                          "--embeddings."]
    assert not list(folder.glob("*.xmp"))
    assert run("tag", job, "--duplicates", "--remove").exit_code == 0  # taking marks away needs no groups


@pytest.mark.parametrize(("args", "code", "says"), [
    (("nosuchjob", "--duplicates"), 1, "nosuchjob"),
    (("alike1", "--no-labels"), 2, "--no-labels leaves nothing to tag: add --duplicates."),
])
def test_an_unknown_job_and_nothing_to_tag_are_one_line(run, alike, args, code, says):
    result = run("tag", *args)
    assert result.exit_code == code and says in result.stderr and "Traceback" not in result.output
    assert len([line for line in result.stderr.splitlines() if line.startswith("Error")]) == 1
