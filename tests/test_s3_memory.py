"""The producer's memory while it submits an s3:// prefix (issue 27: "100 000 keys are submitted with the
producer's memory flat"), against a real S3 server (SeaweedFS's weed mini, tests/s3server.py) and a real Redis.

tracemalloc's peak of a submission (listing, batching, staging, publishing) must not grow with the keys: from
FEW to MANY keys it may grow by less than a list of the added keys' URLs (~100 bytes each) or a set of their
digests (~90) would take. What a submission holds is bounded but not small (a LIST page of 1000 keys, 500
batches staged per round trip): here batches of 4 keep the staging below FEW keys, so that what grows shows at
thousands of keys, not hundreds of thousands (bench/s3.py measures 100,000), and pages of 50 keys keep a page's
parsing (~500 bytes a key, botocore's dicts) far under the bound: the peak is wherever such transients happen to
coincide, and with pages of 250 keys one page's 125 KB alone came near the 100 KB bound (a run of the whole
suite saw the peak grow by 35 bytes a key with nothing held). The
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
FEW, MANY = 2000, 20000
# MANY - FEW keys at GROWTH_PER_KEY is 450 KB: a list of their URLs (~1.8 MB) or a set of their digests (~1.6 MB)
# stands far above it; the peak's own noise (where a submission's transients happen to coincide, and what grows with
# the number of folders and publishing rounds, not keys) far below: 150-200 KB from 2,000 to 6,000 keys, 235 KB
# (13 bytes a key) from 2,000 to 20,000. With 6,000 keys the bound (100 KB) sat under that noise.
GROWTH_PER_KEY = 25  # bytes the peak may grow by per added key: a quarter of a URL's
BATCH_SIZE = 4  # 500 staged batches hold 2,000 images: FEW fills the staging once
PAGE_SIZE = 50  # keys a LIST page: its parsing's transient stays far under (MANY - FEW) * GROWTH_PER_KEY
PUT_THREADS = 8  # the test client's pool holds 10 connections (22,000 objects: about a minute)


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
    submit(iter_images([keys["many"]], PathFilter()), settings=settings, store=store, batch_size=BATCH_SIZE)
    # ...once untraced, and the larger one: the S3 client, Celery's sender and the Redis connections are made
    # before measuring, and the bounded caches that fill a request at a time are full (urllib's urlsplit cache of
    # 128 URLs, each LIST page's URL new with its continuation token; botocore's): filling during the MANY run
    # and not the FEW one, they showed as ~50 bytes a key at pages of 50 keys while holding nothing per key.
    few, few_peak = submission_peak(keys["few"], settings, store)
    many, many_peak = submission_peak(keys["many"], settings, store)
    assert (few, many) == (FEW, MANY)
    growth = many_peak - few_peak
    assert growth < (MANY - FEW) * GROWTH_PER_KEY, (
        f"the peak grew by {growth:,} bytes ({growth / (MANY - FEW):.0f} per key) from {FEW} to {MANY} keys "
        f"({few_peak:,} -> {many_peak:,})")
