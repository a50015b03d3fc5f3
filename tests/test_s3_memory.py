"""The producer's memory while it submits an s3:// prefix (issue 27: "100 000 keys are submitted with the
producer's memory flat"), against a real S3 server (SeaweedFS's weed mini, tests/s3server.py) and a real Redis.

tracemalloc's peak of a submission (listing, batching, staging, publishing) must not grow with the keys: from
FEW to MANY keys it may grow by less than a list of the added keys' URLs (~100 bytes each) or a set of their
digests (~90) would take. What a submission holds is bounded but not small (a LIST page of 1000 keys, 500
batches staged per round trip): here pages of 250 keys and batches of 4 keep those bounds below FEW keys, so
that what grows shows at thousands of keys, not hundreds of thousands (bench/s3.py measures 100,000). The
garbage collector's oldest generation is collected at every chance while measuring: else the peak counts cyclic
garbage (botocore makes some per request) waiting for a full collection, which comes later the more was
allocated, and grew by ~30 bytes per key here with nothing held.
"""

from __future__ import annotations

import gc
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import pytest

from imgq.jobs.submit import submit
from imgq.storage.selection import PathFilter
from imgq.storage.walk import iter_images

BUCKET = "imgq-memory"
FEW, MANY = 2000, 6000
GROWTH_PER_KEY = 25  # bytes the peak may grow by per added key: a quarter of a URL's
BATCH_SIZE = 4  # 500 staged batches hold 2,000 images: FEW fills the staging once
PAGE_SIZE = 250
PUT_THREADS = 8  # the test client's pool holds 10 connections


@pytest.fixture(scope="module")
def keys(s3_server):
    """FEW objects under few/ and MANY under many/, 500 to a folder; {prefix: URL}."""
    client = s3_server.bucket(BUCKET)
    names = [f"{prefix}/d{n // 500:02d}/{n:06d}.jpg" for prefix, count in (("few", FEW), ("many", MANY))
             for n in range(count)]
    with ThreadPoolExecutor(PUT_THREADS) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=BUCKET, Key=key, Body=b"\xff\xd8\xff" + key.encode()),
                      names))
    return {prefix: f"s3://{BUCKET}/{prefix}" for prefix in ("few", "many")}


def submission_peak(url: str, settings, store) -> tuple[int, int]:
    """(images submitted, tracemalloc's peak in bytes) of submitting ``url`` as `imgq submit URL` does."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.set_threshold(thresholds[0], 1, 1)  # the oldest generation too, whenever the youngest is collected
    tracemalloc.start()
    try:
        submitted = submit(iter_images([url], PathFilter()), settings=settings, store=store, batch_size=BATCH_SIZE)
        return submitted.total, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        gc.set_threshold(*thresholds)


def test_submitting_a_prefix_holds_no_memory_per_key(s3, keys, settings, store, monkeypatch):
    from imgq.storage.s3 import S3Objects

    monkeypatch.setattr(S3Objects, "page_size", PAGE_SIZE)
    submit(iter_images([keys["few"]], PathFilter()), settings=settings, store=store, batch_size=BATCH_SIZE)
    # ...once untraced: the S3 client, Celery's sender and the Redis connections are made before measuring
    few, few_peak = submission_peak(keys["few"], settings, store)
    many, many_peak = submission_peak(keys["many"], settings, store)
    assert (few, many) == (FEW, MANY)
    growth = many_peak - few_peak
    assert growth < (MANY - FEW) * GROWTH_PER_KEY, (
        f"the peak grew by {growth:,} bytes ({growth / (MANY - FEW):.0f} per key) from {FEW} to {MANY} keys "
        f"({few_peak:,} -> {many_peak:,})")
