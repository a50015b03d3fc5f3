"""A worker killed mid-job on s3:// objects (a real S3 server, tests/s3server.py): every object ends with exactly
one record, as the same test on local files (tests/reliability/test_faults.py) proves for files."""

from __future__ import annotations

import dataclasses
import io

import pytest
from PIL import Image

from imgq.jobs.deliveries import Deliveries
from imgq.results.store import ResultStore
from tests import imagegen
from tests.reliability.conftest import assert_exactly_one_record_each, submit, wait_until

pytestmark = pytest.mark.slow

BUCKET = "imgq-faults"


def small_objects(client, count: int) -> list[str]:
    """``count`` small PNG objects in BUCKET, as the local test's small images; their URLs, in order."""
    urls = []
    for index in range(count):
        out = io.BytesIO()
        Image.fromarray(imagegen.pattern(48, 48, seed=index)).save(out, format="PNG")
        key = f"killed/img{index:03d}.png"
        client.put_object(Bucket=BUCKET, Key=key, Body=out.getvalue())
        urls.append(f"s3://{BUCKET}/{key}")
    return urls


def test_a_worker_killed_mid_s3_job_loses_nothing_and_repeats_nothing(fast_settings, start_worker, s3):
    settings = dataclasses.replace(fast_settings, s3_endpoint_url=s3.endpoint, allowed_roots=(f"s3://{BUCKET}/",))
    urls = small_objects(s3.bucket(BUCKET), 120)
    store = ResultStore.from_settings(settings)
    first = start_worker(settings, **s3.credentials)
    job = submit(settings, urls)
    wait_until(lambda: store.status(job).processed >= 8, 120, "the first batches")
    first.process.kill()  # SIGKILL: batches in hand stay unacknowledged for the hour of visibility timeout
    first.process.wait()
    assert store.status(job).processed < len(urls)
    second = start_worker(settings, **s3.credentials)
    wait_until(lambda: store.status(job).processed == len(urls), 180, "the job to complete")
    records = assert_exactly_one_record_each(settings, job, urls)
    assert {r["status"] for r in records} == {"ok"}
    assert {r["worker"].split("@")[0] for r in records} == {first.name, second.name}
    assert max(Deliveries(store.redis, store.keys).attempts(job).values()) >= 2  # the lost ones, again
    assert store.redis.hlen(store.keys.results(job)) == len(urls)  # no record beside them
