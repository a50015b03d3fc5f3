"""Photos alike end to end: `imgq submit --embeddings` through a real worker (random weights), its per-batch
embedding files, and `imgq duplicates` / `imgq similar` on a job of photos and altered copies of each made
here (re-encoded, resized, cropped, turned by EXIF), plus one byte-for-byte copy."""

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imgq.alike.batchfile import batch_files, read_batch
from producer.cli import cli

PHOTOS = Path(__file__).resolve().parent.parent.parent / "shared" / "photos"
ORIGINALS = 12
pytestmark = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"no shared photos at {PHOTOS}")


def invoke(settings, *args):
    return CliRunner().invoke(cli, list(args), env=settings.as_env(), catch_exceptions=False)


def _copies(source: Path, folder: Path, stem: str) -> None:
    """The original, and a re-encoded (quality 55), a 60%-resized, an 8%-cropped copy of it, and one whose
    pixels lie on their side with an EXIF orientation (6) that turns them upright."""
    image = Image.open(source).convert("RGB")
    image.save(folder / f"{stem}.jpg", quality=92)
    image.save(folder / f"{stem}-q55.jpg", quality=55)
    image.resize((round(image.width * 0.6), round(image.height * 0.6))).save(folder / f"{stem}-small.jpg")
    dx, dy = round(image.width * 0.04), round(image.height * 0.04)
    image.crop((dx, dy, image.width - dx, image.height - dy)).save(folder / f"{stem}-crop.jpg", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the pixels are stored turned anticlockwise
    image.transpose(Image.Transpose.ROTATE_90).save(folder / f"{stem}-exif.jpg", quality=92, exif=exif)


@pytest.fixture(scope="module")
def alike_job(live_worker, worker_settings, tmp_path_factory):
    """A job of 12 photos, four altered copies of each and one exact copy of the first: 61 images."""
    folder = tmp_path_factory.mktemp("alike")
    sources = sorted(PHOTOS.glob("*.JPEG"))[::20][:ORIGINALS]
    for number, source in enumerate(sources):
        _copies(source, folder, f"p{number:02d}")
    shutil.copyfile(folder / "p00.jpg", folder / "p00-same.jpg")
    result = invoke(worker_settings, "submit", str(folder), "--embeddings", "--batch-size", "16")
    assert result.exit_code == 0, result.output
    job = result.stdout.strip()
    assert invoke(worker_settings, "wait", job, "--timeout", "300").exit_code == 0
    return job


@pytest.mark.slow
def test_each_batch_keeps_one_file_of_the_documented_shape_and_dtype(alike_job, worker_settings):
    files = batch_files(worker_settings.effective_dump_root, alike_job)
    assert [os.path.basename(f) for f in files] == [f"embeddings-{b:06d}.npz" for b in range(4)]  # 61 / 16
    rows = [read_batch(f) for f in files]
    assert sum(len(r) for r in rows) == 5 * ORIGINALS + 1
    for r in rows:
        assert r.embedding.dtype == np.float16 and r.embedding.shape[1] == 2048
        assert np.allclose(np.linalg.norm(r.embedding.astype(np.float32), axis=1), 1, atol=3e-3)
        assert r.phash.dtype == np.uint64 and r.content.dtype == np.uint8 and r.content.shape[1] == 16
        assert r.model == "resnet50" and r.weights.startswith("random")
    per_image = sum(os.path.getsize(f) for f in files) / (5 * ORIGINALS + 1)
    assert 2048 * 2 + 32 < per_image < 2048 * 2 + 32 + 400  # the vector, the hashes, a path and headers


@pytest.mark.slow
def test_duplicates_puts_every_copy_with_its_original_and_no_two_photos_together(alike_job, worker_settings,
                                                                                  tmp_path):
    out = tmp_path / "dups.jsonl"
    result = invoke(worker_settings, "duplicates", alike_job, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "Calibrated on altered copies of" in result.stderr and "same-moment tier is off" in result.stderr
    members = [json.loads(line) for line in out.read_text().splitlines()]
    groups: dict[int, list[dict]] = {}
    for member in members:
        groups.setdefault(member["group"], []).append(member)
    by_photo = {}
    for number, group in groups.items():
        stems = {Path(m["path"]).name[:3] for m in group}
        assert len(stems) == 1, f"distinct photos in group {number}: {group}"  # no two photos together
        assert sum(m["keeper"] for m in group) == 1
        assert {m["tier"] for m in group} <= {"identical", "same_picture"}
        by_photo[stems.pop()] = {Path(m["path"]).name for m in group}
    for number in range(ORIGINALS):
        stem = f"p{number:02d}"
        assert {f"{stem}.jpg", f"{stem}-q55.jpg", f"{stem}-small.jpg", f"{stem}-crop.jpg",
                f"{stem}-exif.jpg"} <= by_photo[stem]


@pytest.mark.slow
def test_identical_files_make_an_identical_group_and_csv_says_so(alike_job, worker_settings):
    result = invoke(worker_settings, "duplicates", alike_job, "--format", "csv", "--max-distance", "0")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    [group] = {r["group"] for r in rows if Path(r["path"]).name == "p00-same.jpg"}
    members = {Path(r["path"]).name: r for r in rows if r["group"] == group}
    # The two files are one: whichever is the keeper, the other is identical to it.
    keeper = next(name for name, r in members.items() if r["keeper"] == "True")
    other = ({"p00.jpg", "p00-same.jpg"} - {keeper}).pop()
    assert keeper in ("p00.jpg", "p00-same.jpg")
    assert members[other]["tier"] == "identical" and members[other]["similarity"] == "1.0"


@pytest.mark.slow
def test_similar_finds_the_image_itself_first_among_its_copies(alike_job, worker_settings):
    result = invoke(worker_settings, "similar", alike_job, "0", "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(hits) == 3 and all(-1 <= h["similarity"] <= 1 for h in hits)
    assert hits == sorted(hits, key=lambda h: -h["similarity"])


@pytest.mark.slow
def test_similar_to_a_new_photo_classifies_it_first_and_finds_its_copy(alike_job, worker_settings, tmp_path):
    """A byte-for-byte copy of p03.jpg outside the job: classified by the live worker (the job's model and
    weights), its embedding is p03.jpg's own, so p03.jpg comes first at a cosine of 1."""
    job_folder = Path(read_batch(batch_files(worker_settings.effective_dump_root, alike_job)[0]).path[0].decode())
    shutil.copyfile(job_folder.parent / "p03.jpg", tmp_path / "new.jpg")
    result = invoke(worker_settings, "similar", alike_job, "--to", str(tmp_path / "new.jpg"), "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert Path(hits[0]["path"]).name == "p03.jpg" and hits[0]["similarity"] == pytest.approx(1, abs=2e-3)
    (tmp_path / "notes.jpg").write_text("not a photo")
    result = invoke(worker_settings, "similar", alike_job, "--to", str(tmp_path / "notes.jpg"))
    assert result.exit_code == 1 and "could not be classified (not_an_image" in result.output
    assert len(result.output.splitlines()) == 1


@pytest.mark.slow
def test_a_job_without_embeddings_and_jobs_of_other_weights_are_refused_in_one_line(alike_job, worker_settings,
                                                                                     tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.jpg")
    plain = invoke(worker_settings, "submit", str(tmp_path)).stdout.strip()
    invoke(worker_settings, "wait", plain, "--timeout", "120")
    result = invoke(worker_settings, "duplicates", plain)
    assert result.exit_code == 1 and "no embedding files" in result.output and "Traceback" not in result.output
    # A job whose files say other weights: copied, then its model's weights changed.
    other = "otherweights1"
    folder = os.path.join(worker_settings.effective_dump_root, other)
    os.makedirs(folder)
    source = batch_files(worker_settings.effective_dump_root, alike_job)[0]
    with np.load(source) as data:
        arrays = dict(data)
    np.savez(os.path.join(folder, "embeddings-000000.npz"), **{**arrays, "weights": np.array("imagenet")})
    from imgq.results.store import ResultStore

    store = ResultStore.from_settings(worker_settings)
    store.commit_job(other, name=other, total=1, batches=1, retention=0, params={}, publishing=False)
    result = invoke(worker_settings, "duplicates", alike_job, other)
    assert result.exit_code == 1 and "never meet" in result.output and len(result.output.splitlines()) == 1


@pytest.mark.slow
def test_results_embeddings_reads_the_batch_files_of_a_job_without_dumps(alike_job, worker_settings, tmp_path):
    out = tmp_path / "emb.npy"
    result = invoke(worker_settings, "results", alike_job, "--embeddings", str(out))
    assert result.exit_code == 0, result.output
    array = np.load(out)
    index = [json.loads(line) for line in (tmp_path / "emb.index.jsonl").read_text().splitlines()]
    assert array.shape == (5 * ORIGINALS + 1, 2048) and array.dtype == np.float16
    assert [e["row"] for e in index] == list(range(len(array)))  # every image has its row, in submission order
    files = [read_batch(f) for f in batch_files(worker_settings.effective_dump_root, alike_job)]
    first = files[0]
    assert np.array_equal(array[index[int(first.image[0])]["row"]], first.embedding[0])
