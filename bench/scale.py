"""`python -m bench scale`: imgq at a million images, with no model (issue 13).

In order, on one job of ``--images`` paths (1,000 folders of 1,000 empty files for a million):

1. `imgq submit ROOT` and `imgq submit --from-file LIST` as new processes: wall seconds and peak RSS of each
   (``os.wait4``'s ``ru_maxrss`` of that child alone).
2. Redis bytes per image, queued: ``MEMORY USAGE key SAMPLES 0`` of every key of the namespace (kombu's
   queue included) after the submission, before any worker.
3. Redis bytes per image, finished: kombu's queue deleted (a worker would have consumed it), then a
   synthetic record for every image written through ``ResultStore.record_results``, batch by batch as
   workers do (5 labels, a realistic worker name and weights id, timings, 1% errors); the same measure.
4. Export time and peak RSS of `imgq results JOB --format jsonl|csv|parquet -o FILE` as new processes, and
   of ``write_parquet`` alone over generated records (no Redis), beside a process that only generates them.

Every figure comes with the share of the machine's CPU that other processes took meanwhile
(bench/interference.py). The Redis server is not a child of the benchmark, so its CPU counts as "others".
The namespace (``imgqscale-*``) is deleted afterwards with SCAN, never FLUSHDB.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from itertools import islice

import numpy as np
import redis

from bench import REPO, interference
from bench.queueing import imgq_command
from imgq.contract import ResultRecord, error_record, ok_record
from imgq.keys import Keys
from imgq.labels.classes import class_index
from imgq.results.store import ResultStore, delete_namespace

DEFAULT_IMAGES = 1_000_000
FILES_PER_FOLDER = 1000
TOP_K = 5
ERROR_EVERY = 100  # one image in a hundred fails to decode
WORKER = "celery@imgq-worker-7d9f8c6b5-x2k4q"
WEIGHTS = "file:resnet50_imagenet.weights.h5:sha256:4f2c9a1be07d"
SUBMIT_TARGET = {"seconds": 10.0, "peak_rss_mb": 200.0}  # for 1,000,000 paths
QUIET, QUIET_WAIT = 0.10, 30.0  # wait (by default) at most 30 s for a quiet machine before each figure
EXPORTS = ("jsonl", "csv", "parquet")


def run(images: int, redis_url: str, tmp_root: str | None = None, quiet_wait: float = QUIET_WAIT, log=print) -> dict:
    """Every figure of the scale benchmark as a dict (rendered by ``render``). ``quiet_wait``: seconds to wait
    at most for other processes to quieten down before each figure."""
    log = Log(log, quiet_wait)
    # Children run this tree's imgq, whatever the venv's editable install points at (as bench/run.py does).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    namespace = f"imgqscale-{uuid.uuid4().hex[:8]}"
    results: dict = {"images": images, "redis": client.info("server")["redis_version"],
                     "load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="imgq-scale-", dir=tmp_root) as tmp:
        try:
            submit_figures(results, images, redis_url, namespace, tmp, log)
            job = results.pop("job")
            memory_figures(results, client, namespace, job, images, log)
            export_figures(results, redis_url, namespace, job, tmp, log)
            results["parquet_alone"] = parquet_alone(images, tmp, log)
        finally:
            for ns in (namespace, namespace + "-list", namespace + "-sink"):
                delete_namespace(redis_url, ns)
    results["load_average_after"] = os.getloadavg()
    return results


# -- submission --------------------------------------------------------------------------------------------

def make_tree(root: str, images: int, listing: str) -> None:
    """``images`` empty .jpg files, FILES_PER_FOLDER to a folder (the producer never opens them), and the
    list of their paths, one per line, in ``listing``."""
    with open(listing, "w") as out:
        for n in range(images):
            folder = os.path.join(root, f"d{n // FILES_PER_FOLDER:04d}")
            if n % FILES_PER_FOLDER == 0:
                os.makedirs(folder)
            path = os.path.join(folder, f"img{n % FILES_PER_FOLDER:04d}.jpg")
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
            out.write(path + "\n")


def submit_figures(results: dict, images: int, redis_url: str, namespace: str, tmp: str, log) -> None:
    root, listing = os.path.join(tmp, "tree"), os.path.join(tmp, "paths.txt")
    started = time.perf_counter()
    make_tree(root, images, listing)
    log(f"made {images:,} empty files in {time.perf_counter() - started:.0f} s")
    walk = child(log, "submit (walk)", [*imgq_command(), "--broker-url", redis_url, "--namespace", namespace,
                                        "submit", root])
    results["job"] = walk.pop("stdout").strip()
    results["submit_walk"] = walk
    listed = child(log, "submit (list)", [*imgq_command(), "--broker-url", redis_url, "--namespace",
                                          namespace + "-list", "submit", "--from-file", listing])
    listed.pop("stdout")
    results["submit_list"] = listed
    delete_namespace(redis_url, namespace + "-list")


# -- Redis memory --------------------------------------------------------------------------------------------

def namespace_bytes(client: redis.Redis, namespace: str) -> dict:
    """``MEMORY USAGE`` (exact: SAMPLES 0) of every key ``<namespace>:*``, in all and by kind of key (the key
    less its namespace and its last part, the job id or the queue name)."""
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    sizes = pipe.execute()
    kinds: Counter = Counter()
    for key, size in zip(keys, sizes, strict=True):
        kinds[_kind(key, namespace)] += size or 0
    return {"bytes": sum(kinds.values()), "keys": len(keys), "by_kind": dict(kinds.most_common())}


def _kind(key: str, namespace: str) -> str:
    rest = key[len(namespace) + 1:]
    if not rest.startswith("kombu:"):
        return rest.split(":")[0]
    tail = rest[len("kombu:"):]
    return "kombu:queue" if tail == namespace else "kombu:binding" if tail.startswith("_kombu.binding") else rest


def memory_figures(results: dict, client: redis.Redis, namespace: str, job: str, images: int, log) -> None:
    results["queued"] = namespace_bytes(client, namespace)
    log(f"queued: {results['queued']['bytes'] / images:.0f} bytes of Redis per image")
    store = ResultStore(client, namespace)
    client.delete(Keys(namespace).kombu_queue)  # consumed by the workers
    with interference.watch() as share:
        started = time.perf_counter()
        written = record_everything(store, job)
        seconds = time.perf_counter() - started
    results["record"] = {"records": written, "seconds": seconds, "other_cpu": share.others}
    results["finished"] = namespace_bytes(client, namespace)
    log(f"finished: {results['finished']['bytes'] / images:.0f} bytes of Redis per image "
        f"({written:,} records written in {seconds:.0f} s)")
    results["finished_sink"] = sink_bytes(client, store, namespace + "-sink", job)
    log(f"finished with --sink: {results['finished_sink']['bytes'] / images:.0f} bytes of Redis per image")


def sink_bytes(client: redis.Redis, store: ResultStore, namespace: str, job: str) -> dict:
    """Redis bytes of the same job submitted with --sink, once every batch is counted: its records are in
    Parquet files (not written here: their size does not touch Redis), Redis keeps the counts and failed ids."""
    sunk = ResultStore(client, namespace)
    batches = store.iter_batches(job)  # streamed: this process forks the export children, whose peak RSS counts
    while chunk := list(islice(batches, 500)):
        sunk.stage_batches(job, chunk)
    status = store.status(job)
    sunk.commit_job(job, name=status.name, total=status.total, batches=int(client.hget(store.keys.job(job), "batches")),
                    params={**status.params, "sink": True})
    rng = np.random.default_rng(0)
    for message in store.iter_batches(job):
        sunk.record_sunk(job, message["batch"], [synthetic_record(job, image, path, rng)
                                                 for image, path in message["images"]])
    return namespace_bytes(client, namespace)


def record_everything(store: ResultStore, job: str) -> int:
    """A synthetic record for every image of ``job``, written batch by batch as workers write them."""
    store.mark_started(job)
    rng = np.random.default_rng(0)
    written = 0
    for message in store.iter_batches(job):
        records = [synthetic_record(job, image, path, rng) for image, path in message["images"]]
        written = store.record_results(job, records)
    return written


def synthetic_record(job: str, image: int, path: str, rng: np.random.Generator) -> ResultRecord:
    """What a worker writes for one image: 5 labels with float32 scores, provenance and timings."""
    provenance = {"weights": WEIGHTS, "precision": "fp32", "worker": WORKER,
                  "decode_ms": round(float(rng.uniform(2, 12)), 2)}
    if image % ERROR_EVERY == ERROR_EVERY - 1:
        return error_record(job, image, path, "corrupt", "image file is truncated (37 bytes not processed)",
                            **provenance)
    names = class_index()
    classes = rng.choice(len(names), TOP_K, replace=False)
    scores = np.sort(rng.dirichlet(np.ones(TOP_K * 4)).astype(np.float32)[:TOP_K])[::-1]
    top = [{"wnid": names[c][0], "label": names[c][1], "score": float(s)} for c, s in zip(classes, scores,
                                                                                            strict=True)]
    return ok_record(job, image, path, top, **provenance, inference_ms=round(float(rng.uniform(30, 45)), 2))


# -- exports -------------------------------------------------------------------------------------------------

def export_figures(results: dict, redis_url: str, namespace: str, job: str, tmp: str, log) -> None:
    results["exports"] = {}
    for fmt in EXPORTS:
        out = os.path.join(tmp, f"results.{fmt}")
        figures = child(log, f"export {fmt}", [*imgq_command(), "--broker-url", redis_url, "--namespace",
                                               namespace, "results", job, "--format", fmt, "-o", out])
        figures.pop("stdout")
        results["exports"][fmt] = {**figures, "file_mb": os.path.getsize(out) / 1e6}
        os.unlink(out)


def parquet_alone(images: int, tmp: str, log) -> dict:
    """Peak RSS of ``write_parquet`` over ``images`` generated records, beside a process that generates the
    same records and drops them: the difference is what the Parquet writer holds (one row group)."""
    out = os.path.join(tmp, "alone.parquet")
    code = "import sys; from bench.scale import write_generated; write_generated(int(sys.argv[1]), sys.argv[2])"
    generate = child(log, "generate records", [sys.executable, "-c", code, str(images), ""])
    write = child(log, "write_parquet", [sys.executable, "-c", code, str(images), out])
    return {"generate": generate, "write": write, "file_mb": os.path.getsize(out) / 1e6}


def write_generated(images: int, out: str) -> None:
    """Generate ``images`` records and write them to ``out`` with write_parquet ("" : only generate them)."""
    from producer.exports.parquet import write_parquet

    rng = np.random.default_rng(0)
    records = (synthetic_record("scalejob", i, f"/photos/d{i // 1000:04d}/img{i % 1000:04d}.jpg", rng)
               for i in range(images))
    if out:
        write_parquet(records, out, TOP_K)
    else:
        for _ in records:
            pass


# -- measuring a child ---------------------------------------------------------------------------------------

class Log:
    """The log function, and how long to wait for a quiet machine before each figure."""

    def __init__(self, log, quiet_wait: float):
        self.log, self.quiet_wait = log, quiet_wait

    def __call__(self, message: str) -> None:
        self.log(message)


def child(log: Log, name: str, argv: list[str]) -> dict:
    """Run ``argv`` to its end: wall seconds, its own peak RSS (``wait4``), stdout, others' CPU share."""
    interference.wait_quiet(QUIET, log.quiet_wait, log)
    with interference.watch() as share, tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{name} failed ({process.returncode}): {stderr.read().decode()[-2000:]}")
        out = stdout.read().decode()
    figures = {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "other_cpu": share.others,
               "load_average": os.getloadavg()[0], "stdout": out}
    log(f"{name}: {seconds:.1f} s, peak RSS {figures['peak_rss_mb']:.0f} MB, others' CPU {_share(share.others)}")
    return figures


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


# -- report --------------------------------------------------------------------------------------------------

def render(results: dict) -> str:
    from bench.report import table

    n = results["images"]
    rows = []
    for key, label in (("submit_walk", "imgq submit ROOT (walk)"), ("submit_list", "imgq submit --from-file")):
        r = results[key]
        target = f"<= {SUBMIT_TARGET['seconds']:g} s, <= {SUBMIT_TARGET['peak_rss_mb']:g} MB at 1,000,000"
        met = r["seconds"] <= SUBMIT_TARGET["seconds"] and r["peak_rss_mb"] <= SUBMIT_TARGET["peak_rss_mb"]
        rows.append([label, f"{r['seconds']:.1f} s", f"{r['peak_rss_mb']:.0f} MB", target,
                     ("yes" if met else "NO") if n == DEFAULT_IMAGES else "-", _share(r["other_cpu"]),
                     f"{r['load_average']:.2f}"])
    for fmt, r in results["exports"].items():
        rows.append([f"imgq results --format {fmt} ({r['file_mb']:.0f} MB)", f"{r['seconds']:.1f} s",
                     f"{r['peak_rss_mb']:.0f} MB", "report", "-", _share(r["other_cpu"]), f"{r['load_average']:.2f}"])
    alone = results["parquet_alone"]
    for key, label in (("generate", "generate records only"), ("write", "write_parquet of them")):
        r = alone[key]
        rows.append([f"{label} (no Redis)", f"{r['seconds']:.1f} s", f"{r['peak_rss_mb']:.0f} MB", "bounded", "-",
                     _share(r["other_cpu"]), f"{r['load_average']:.2f}"])
    timing = table(["figure", "time", "peak RSS", "target", "met", "others' CPU", "load 1 min"], rows)
    return f"{n:,} images, Redis {results['redis']}\n\n{timing}\n\n{memory_table(results)}\n"


def memory_table(results: dict) -> str:
    from bench.report import table

    n = results["images"]
    rows = []
    for key, label in (("queued", "queued (after submit, no worker)"), ("finished", "finished (every record)"),
                       ("finished_sink", "finished, with --sink (counts only)")):
        m = results[key]
        kinds = ", ".join(f"{kind} {size / n:.0f}" for kind, size in m["by_kind"].items() if size / n >= 0.5)
        rows.append([label, f"{m['bytes'] / n:.0f}", f"{m['bytes'] / 1e6:.0f} MB", str(m["keys"]), kinds])
    record = results["record"]
    rows.append(["record_results of every image", f"{record['seconds']:.0f} s",
                 f"{record['records'] / record['seconds']:,.0f} records/s", "",
                 f"others' CPU {_share(record['other_cpu'])}"])
    return table(["Redis", "bytes/image", "in all", "keys", "bytes/image by key"], rows)
