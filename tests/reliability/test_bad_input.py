"""Every kind of bad or odd input, in ONE job through a real worker: each case gets the right error code
or a correct result, and the rest of the batch is classified."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

from imgq.jobs import submit as enqueue
from imgq.results.store import ResultStore, delete_namespace
from tests import imagegen
from tests.reliability.conftest import wait_until

pytestmark = pytest.mark.slow
OK = "ok"


def _exif_rotated(folder):
    """The same picture twice: upright, and stored sideways with EXIF orientation 6 (as phones do)."""
    # 2x2 blocks of one colour: resizing to 224x224 picks the same pixels whichever way the image lies.
    upright = Image.fromarray(imagegen.pattern(224, 112, seed=3)).resize((448, 224), Image.NEAREST)
    upright.save(folder / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the stored pixels are the upright ones turned 90 CCW
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "sideways.png", exif=exif)
    return {"upright.png": OK, "sideways.png": OK}


def _write_cases(root, outside):
    """name -> expected code (or OK) for every case; the files are written under ``root``."""
    f = root
    imagegen.save(f / "good-1.jpg", seed=1)
    imagegen.save(f / "good-2.png", seed=2)
    imagegen.truncated_jpeg(f / "truncated.jpg")
    (f / "zero.jpg").write_bytes(b"")
    (f / "random.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    (f / "text.jpg").write_text("hello, I am text\n")
    imagegen.save(f / "png-named.jpg", fmt="PNG", seed=4)
    imagegen.bomb_png(f / "bomb.png")
    Image.fromarray(imagegen.pattern(seed=5)[..., 0].astype(np.uint16) * 257).save(f / "sixteen.png")
    imagegen.save(f / "cmyk.jpg", "CMYK", seed=6)
    palette = Image.fromarray(imagegen.pattern(seed=7)).convert("P")
    palette.info["transparency"] = 0
    palette.save(f / "palette-transparent.png", transparency=0)
    imagegen.save(f / "la.png", "LA", seed=8)
    imagegen.save(f / "rgba.png", "RGBA", seed=9)
    frames = [Image.fromarray(imagegen.pattern(seed=s)).convert("P") for s in (10, 11)]
    frames[0].save(f / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    pages = [Image.fromarray(imagegen.pattern(seed=s)) for s in (12, 13)]
    pages[0].save(f / "pages.tif", save_all=True, append_images=pages[1:])
    imagegen.save(f / "lossy.webp", seed=14, quality=80)
    imagegen.save(f / "gray.jpg", "L", seed=15)
    imagegen.save(f / "one.png", size=(1, 1), seed=16)
    imagegen.save(f / "long.png", size=(10000, 10), seed=17)
    (f / "eps.jpg").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    (f / "folder.jpg").mkdir()
    os.symlink(f / "loop-b.jpg", f / "loop-a.jpg")
    os.symlink(f / "loop-a.jpg", f / "loop-b.jpg")
    imagegen.save(outside / "outside.png", seed=18)
    os.symlink(outside / "outside.png", f / "link-to-outside.png")
    odd_names = {os.fsdecode(b"caf\xe9-latin1.png"): OK, "spaces and\na newline.png": OK}
    for name in odd_names:
        imagegen.save(f / name, seed=19)
    cases = {
        "good-1.jpg": OK, "good-2.png": OK, "truncated.jpg": "corrupt", "zero.jpg": "not_an_image",
        "random.jpg": "not_an_image", "text.jpg": "not_an_image", "png-named.jpg": OK, "bomb.png": "too_large",
        "sixteen.png": OK, "cmyk.jpg": OK, "palette-transparent.png": OK, "la.png": OK, "rgba.png": OK,
        "animated.gif": OK, "pages.tif": OK, "lossy.webp": OK, "gray.jpg": OK, "one.png": OK, "long.png": OK,
        "eps.jpg": "not_an_image", "folder.jpg": "unreadable", "loop-a.jpg": "unreadable",
        "missing.jpg": "missing", "link-to-outside.png": "forbidden", **odd_names, **_exif_rotated(f),
    }
    if os.geteuid() != 0:  # root reads whatever the permissions say
        imagegen.save(f / "no-permission.png", seed=20)
        os.chmod(f / "no-permission.png", 0)
        cases["no-permission.png"] = "unreadable"
    return cases


@pytest.fixture(scope="module")
def job_records(redis_url, tmp_path_factory):
    """One job with every case (and the outside file by its own path), classified by a worker whose
    allowed root is the folder of the cases."""
    from producer.local.workers import LocalWorker
    from tests.conftest import make_settings

    base = tmp_path_factory.mktemp("bad-input")
    root, outside = base / "allowed", base / "outside"
    root.mkdir()
    outside.mkdir()
    cases = _write_cases(root, outside)
    names = list(cases)
    paths = [str(root / name) for name in names] + [str(outside / "outside.png")]
    cases["<outside>"] = "forbidden"
    names.append("<outside>")
    settings = dataclasses.replace(make_settings(redis_url, base, batch_size=8), allowed_roots=(str(root),))
    store = ResultStore.from_settings(settings)
    worker = LocalWorker(settings)
    worker.start()
    try:
        job = enqueue.submit(paths, settings=settings, store=store).job
        worker.wait_ready(store, timeout=180)
        wait_until(lambda: store.status(job).finished, 180, "the job to complete")
        records = list(store.iter_results(job))
    finally:
        worker.stop()
        delete_namespace(redis_url, settings.namespace)
    assert len(records) == len(paths)  # exactly one record per submitted image
    return {name: (expected, record) for name, expected, record in zip(names, cases.values(), records, strict=True)}


CASE_NAMES = ["good-1.jpg", "truncated.jpg", "zero.jpg", "random.jpg", "text.jpg", "png-named.jpg", "bomb.png",
              "sixteen.png", "cmyk.jpg", "palette-transparent.png", "la.png", "rgba.png", "animated.gif",
              "pages.tif", "lossy.webp", "gray.jpg", "one.png", "long.png", "eps.jpg", "folder.jpg", "loop-a.jpg",
              "missing.jpg", "link-to-outside.png", "<outside>", os.fsdecode(b"caf\xe9-latin1.png"),
              "spaces and\na newline.png", "sideways.png"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_each_case_gets_its_code_or_a_result(job_records, name):
    expected, record = job_records[name]
    if expected == OK:
        assert record["status"] == "ok", record["error"]
        assert len(record["top_k"]) == 5
    else:
        assert record["status"] == "error" and record["error"]["code"] == expected, record
        assert record["error"]["message"] and "\n" not in record["error"]["message"]


def test_the_rest_of_the_batch_is_classified(job_records):
    oks = [name for name, (expected, _) in job_records.items() if expected == OK]
    assert all(job_records[name][1]["status"] == "ok" for name in oks) and len(oks) >= 17


def test_exif_rotated_photo_is_labelled_as_the_upright_one(job_records):
    sideways, upright = job_records["sideways.png"][1]["top_k"], job_records["upright.png"][1]["top_k"]
    assert [t["wnid"] for t in sideways] == [t["wnid"] for t in upright]
    assert [t["score"] for t in sideways] == pytest.approx([t["score"] for t in upright], rel=1e-5)


def test_paths_come_back_as_given(job_records):
    record = job_records[os.fsdecode(b"caf\xe9-latin1.png")][1]
    assert os.fsencode(record["path"]).endswith(b"caf\xe9-latin1.png")
