"""Photos alike without a worker: the perceptual hash, the per-batch files, pairs in blocks, the tiers, the
threshold's choice, and the edges of `imgq duplicates` and `imgq similar`'s options."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imgq.alike import pairs as pairs_module
from imgq.alike.batchfile import BatchFileError, BatchVectors, batch_file, normalised, read_batch, read_job, write_batch
from imgq.alike.groups import Rules, group, group_tier, tier_between
from imgq.alike.pairs import cosine_pairs, hash_histogram, hash_pairs
from imgq.alike.phash import phash, popcount
from producer.alike.calibrate import choose_threshold, false_match_rate
from producer.cli import cli
from tests import imagegen


def _hash(array: np.ndarray) -> int:
    return phash(np.asarray(Image.fromarray(array).resize((224, 224), Image.Resampling.NEAREST)))


def _distance(a: int, b: int) -> int:
    return int(popcount(np.array([a ^ b], dtype=np.uint64))[0])


def test_phash_keeps_a_resized_picture_and_tells_others_apart():
    pictures = [imagegen.scene(320, 240, seed) for seed in range(8)]
    hashes = [_hash(p) for p in pictures]
    smaller = [_hash(np.asarray(Image.fromarray(p).resize((192, 144)))) for p in pictures]
    assert all(_distance(a, b) <= 4 for a, b in zip(hashes, smaller, strict=True))
    assert min(_distance(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]) > 10


def test_phash_has_32_bits_set_out_of_64_and_refuses_odd_shapes():
    value = _hash(imagegen.scene(100, 80, 3))
    assert 0 <= value < 2**64 and bin(value).count("1") in range(28, 37)  # bits above the median: about half
    with pytest.raises(ValueError):
        phash(np.zeros((4, 4, 2)))
    # A flat picture: every coefficient 0 but the mean, one bit whatever its size or level.
    assert phash(np.full((1, 1), 7)) == phash(np.full((300, 200, 3), 90)) == 1 << 63


def test_popcount_counts_bits_of_uint64():
    values = np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64)
    assert popcount(values).tolist() == [0, 1, 1, 64]


def _rows(n: int, features: int = 8, seed: int = 0) -> BatchVectors:
    rng = np.random.default_rng(seed)
    return BatchVectors(image=np.arange(n, dtype=np.int64),
                        path=np.array([f"/p/é{i}.jpg".encode() for i in range(n)], dtype=np.bytes_),
                        embedding=normalised(rng.normal(size=(n, features))),
                        phash=rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64),
                        content=rng.integers(0, 256, (n, 16), dtype=np.uint8), model="m", weights="w")


def test_a_batch_file_round_trips_with_its_documented_shape_and_dtype(tmp_path):
    rows = _rows(5, 2048)
    written = write_batch(str(tmp_path), "job1", 3, rows)
    assert written["file"].endswith("job1/embeddings-000003.npz") and written["rows"] == 5
    back = read_batch(written["file"])
    assert back.embedding.dtype == np.float16 and back.embedding.shape == (5, 2048)
    assert back.phash.dtype == np.uint64 and back.content.shape == (5, 16) and back.image.dtype == np.int64
    assert np.allclose(np.linalg.norm(back.embedding.astype(np.float32), axis=1), 1, atol=2e-3)
    # 2 bytes a feature, plus 8 + 8 + 16 bytes of ids and hashes, a padded path and the zip's headers.
    assert 5 * (2048 * 2 + 32) < written["bytes"] < 5 * (2048 * 2 + 32) + 2500
    job = read_job(str(tmp_path), "job1")
    assert job is not None and job.path.tolist()[0] == "/p/é0.jpg" and (back.model, back.weights) == ("m", "w")


def test_normalised_leaves_a_zero_or_nan_vector_zero():
    out = normalised(np.array([[3.0, 4.0], [0.0, 0.0], [np.nan, 1.0]]))
    assert out.dtype == np.float16 and out[0].tolist() == [0.6, 0.7998] or np.allclose(out[0], [0.6, 0.8], atol=1e-3)
    assert out[1].tolist() == [0, 0] and out[2].tolist() == [0, 0]


def test_a_link_or_a_damaged_batch_file_is_refused_in_one_line(tmp_path):
    good = write_batch(str(tmp_path), "job1", 0, _rows(2))["file"]
    link = batch_file(str(tmp_path), "job2", 0)
    os.makedirs(os.path.dirname(link))
    os.symlink(good, link)
    with pytest.raises(BatchFileError, match="symbolic link"):
        read_batch(link)
    damaged = batch_file(str(tmp_path), "job3", 0)
    os.makedirs(os.path.dirname(damaged))
    Path(damaged).write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(BatchFileError, match="not an imgq embedding file"):
        read_batch(damaged)
    with pytest.raises(ValueError):
        batch_file(str(tmp_path), "../x", 0)


def test_pairs_in_small_blocks_are_the_pairs_of_one_block(monkeypatch):
    rows = _rows(40)
    hashes = rows.phash.copy()
    hashes[7] = hashes[3] ^ np.uint64(0b101)
    whole = sorted(hash_pairs(hashes, 20))
    vectors = rows.embedding
    cosines = sorted(cosine_pairs(vectors, 0.5))
    monkeypatch.setattr(pairs_module, "BLOCK_CELLS", 50)  # tiles of 7 x 7
    assert sorted(hash_pairs(hashes, 20)) == whole and (3, 7, 2) in whole
    assert hash_histogram(hashes).sum() == 40 * 39 // 2
    tiled = sorted(cosine_pairs(vectors, 0.5))
    assert [(i, j) for i, j, _ in tiled] == [(i, j) for i, j, _ in cosines] and len(cosines) > 5
    scores = [c for *_, c in cosines]
    assert np.allclose([c for *_, c in tiled], scores, atol=1e-6) and min(scores) >= 0.5


def test_tiers_identical_then_same_picture_then_same_moment():
    rows = _rows(6)
    content, hashes, vectors = rows.content.copy(), rows.phash.copy(), rows.embedding.copy()
    content[1] = content[0]  # 0, 1: identical
    hashes[2] = hashes[3] ^ np.uint64(0b111)  # 2, 3: same picture (3 bits)
    vectors[5] = vectors[4]  # 4, 5: same moment (cosine 1), pictures far apart
    levels = group(content, hashes, vectors, Rules(hash_bits=4, confirm=None, moment=0.99))
    assert [tier_between(levels, a, b) for a, b in ((0, 1), (2, 3), (4, 5), (0, 2))] == [
        "identical", "same_picture", "same_moment", ""]
    assert group_tier(levels, [2, 3]) == "same_picture" and group_tier(levels, [0, 1]) == "identical"
    assert tier_between(group(content, hashes, vectors, Rules(4, None, None)), 4, 5) == ""
    # A same picture the embedding does not confirm (trained weights) is no group.
    assert tier_between(group(content, hashes, vectors, Rules(4, confirm=0.999, moment=None)), 2, 3) == ""


def test_the_threshold_keeps_the_false_match_rate_under_the_target():
    distinct = np.zeros(65, dtype=np.int64)
    distinct[26:39:2] = [10, 50, 200, 400, 200, 50, 10]  # distinct photos: 32 +- ~3 bits, even distances
    distinct[2] = 30  # the job's own duplicates do not move the fit
    copies = {"crop": [2, 8, 20]}
    t, rate = choose_threshold(distinct, copies, 1e-4)
    assert t == 16 and rate <= 1e-4 < false_match_rate(t + 2, 32, 2.9652)  # the reference's own figure
    assert choose_threshold(distinct, copies, 1e-3)[0] == 17  # 18 would be 1.06e-3
    assert choose_threshold(distinct, {"crop": [1]}, 0.5)[0] == 1  # never beyond the farthest copy
    assert choose_threshold(distinct, copies, 1e-300)[0] == -1
    assert false_match_rate(40, 32, 0) == 1.0 and false_match_rate(10, 32, 0) == 0.0
    rates = [false_match_rate(t, 32, 3.0) for t in range(0, 65)]
    assert rates == sorted(rates) and rates[0] > 0 and rates[-1] < 1


@pytest.mark.parametrize("args", [
    ["duplicates", "j", "--false-match-rate", "0"], ["duplicates", "j", "--false-match-rate", "nan"],
    ["duplicates", "j", "--false-match-rate", "inf"], ["duplicates", "j", "--false-match-rate", "-1"],
    ["duplicates", "j", "--false-match-rate", "0.6"], ["duplicates", "j", "--sample", "0"],
    ["duplicates", "j", "--sample", "-3"], ["duplicates", "j", "--sample", "1e9"],
    ["duplicates", "j", "--max-distance", "65"], ["duplicates", "j", "--moment", "nan"],
    ["duplicates", "j", "--confirm", "2"], ["duplicates", "j", "--format", "xml"], ["duplicates"],
    ["similar", "j", "0", "-k", "0"], ["similar", "j", "0", "-k", "-1"], ["similar", "j", "-1"],
    ["similar", "j", "0", "-k", "99999999999"], ["similar", "j", "nan"],
])
def test_options_at_their_edges_are_refused_in_one_line(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "Traceback" not in result.output and "Error" in result.output


def test_the_message_carries_embeddings_only_when_asked():
    from imgq.contract import BatchMessage

    asked = BatchMessage(job="j1", batch=0, images=((0, "/a.jpg"),), top_k=5, embeddings=True)
    assert BatchMessage.from_dict(asked.to_dict()).embeddings is True
    plain = BatchMessage(job="j1", batch=0, images=((0, "/a.jpg"),), top_k=5).to_dict()
    assert "embeddings" not in plain and BatchMessage.from_dict({**plain, "embeddings": "yes"}).embeddings is False


def test_duplicates_of_files_left_by_a_job_redis_forgot(settings):
    """A job id with embedding files under the dump root is read without Redis knowing it (`imgq classify
    --embeddings` on a private server); photos that cannot be opened here cannot calibrate: one line."""
    rows = _rows(4)
    rows.content[1] = rows.content[0]
    rows.phash[3] = rows.phash[2] ^ np.uint64(0b11)
    rows.embedding[3] = rows.embedding[2]  # trained weights ("w"): a same picture the embedding confirms
    write_batch(settings.effective_dump_root, "gonejob1", 0, rows)
    env = settings.as_env()
    result = CliRunner().invoke(cli, ["duplicates", "gonejob1"], env=env)
    assert result.exit_code == 1 and "give --max-distance" in result.output.splitlines()[-1]
    result = CliRunner().invoke(cli, ["duplicates", "gonejob1", "--max-distance", "4", "--format", "csv"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "group,tier,job,image,path,similarity,keeper" and len(lines) == 5
    assert "random" not in result.stderr and lines[3].startswith("2,same_picture,gonejob1,")
    result = CliRunner().invoke(cli, ["duplicates", "nosuchjob2"], env=env)
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_the_worker_keeps_a_batch_file_or_makes_its_records_dump_failed(tmp_path):
    import dataclasses

    from imgq.contract import BatchMessage, error_record, ok_record
    from imgq.settings import Settings
    from worker.batches.batch import Decoded
    from worker.batches.embeddings import keep_embeddings

    photo = tmp_path / "a.png"
    imagegen.save(photo, size=(64, 48))
    good = [Decoded(i, str(photo), imagegen.scene(224, 224, i), None, 1.0) for i in (4, 5)]
    records = [ok_record("job1", 4, str(photo), []), error_record("job1", 5, str(photo), "corrupt", "x")]
    message = BatchMessage(job="job1", batch=2, images=((4, str(photo)), (5, str(photo))), top_k=5, embeddings=True)
    settings = Settings(dump_root=str(tmp_path / "dumps"), state_dir=str(tmp_path))
    features = np.random.default_rng(0).normal(size=(2, 1, 1, 1280)).astype(np.float32)  # MobileNetV3's shape
    assert keep_embeddings(records, good, features, settings, ("resnet50", "random:0"), message) == records
    [kept] = list(read_job(str(tmp_path / "dumps"), "job1").image)  # the error record's image has no row
    back = read_batch(batch_file(str(tmp_path / "dumps"), "job1", 2))
    assert kept == 4 and back.embedding.shape == (1, 1280) and back.phash[0] == phash(good[0].pixels)
    assert bytes(back.content[0]) != bytes(16)  # the file's content hash, read again
    blocked = dataclasses.replace(settings, dump_root=str(photo))  # a file where the folder should be
    out = keep_embeddings(records, good, features, blocked, ("resnet50", "random:0"), message)
    assert out[0].error.code == "dump_failed" and "embedding file" in out[0].error.message and out[1] == records[1]


def test_similar_ranks_by_cosine_and_refuses_an_image_without_a_row(settings):
    rows = _rows(5)
    rows.embedding[3] = rows.embedding[1]
    write_batch(settings.effective_dump_root, "simjob1", 0, rows)
    env = settings.as_env()
    result = CliRunner().invoke(cli, ["similar", "simjob1", "1", "-k", "100", "--json"], env=env)
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(hits) == 4 and hits[0]["image"] == 3 and hits[0]["similarity"] == pytest.approx(1, abs=1e-3)
    assert [h["similarity"] for h in hits] == sorted((h["similarity"] for h in hits), reverse=True)
    result = CliRunner().invoke(cli, ["similar", "simjob1", "99"], env=env)
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "has no embedding" in result.output
