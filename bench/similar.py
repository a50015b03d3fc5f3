"""`python -m bench.similar [--sizes 100000,1000000]`: `imgq similar` and `imgq duplicates` at scale, on synthetic
embeddings (issue 28, item 5): time and memory, and the approximate index against exact search (recall@10).

The embeddings: float16 unit vectors of 2048 features, clustered so that neighbours exist: topics (one per
8,192 rows), clusters of 8 rows around points near a topic, rows near their cluster's point (a row's cosine
with another of its cluster is about 0.6, with one of its topic 0.13, with any other about 0). Written once per size
as batch files of 4,096 rows (imgq/alike/batchfile.py, random pHashes and content hashes) under ``--root`` and
reused. Each figure is measured in a new process (``python -m bench.similar child ...``): its wall time, its peak
RSS (VmHWM) and tracemalloc's peak (numpy's arrays are traced), with the share of the CPU other processes took
(bench/run.py's ``measured``) and the machine (``machine``: CPU model, ISA flags, load average).

- ``exact``: `similar`'s exact search (imgq.alike.search.exact_top_k: a batch file at a time), per query;
- ``build``: the approximate index built and cached (imgq.alike.search.build_index);
- ``approximate``: a search of the cached index per query, and its recall@10 against exact search over the
  same queries (each query a row of the collection, itself left out, as `imgq similar JOB IMAGE` does);
- ``duplicates-random``, ``duplicates``, ``duplicates-indexed`` (``--modes``), at the sizes of
  ``--duplicates-sizes``: `imgq duplicates`' grouping (producer.alike.report.member_rows) with random weights'
  rules (pHash within 16 bits alone), with trained weights' (pHash confirmed at cosine 0.8, same moment at
  cosine MOMENT, every pair looked at: time grows as n^2) and the same with same moments found by the index
  (producer.alike.report.indexed_pairs; the index built beforehand, by ``build``); ``moment_pairs``: how many
  pairs each found.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import click
import numpy as np

FEATURES = 2048
BATCH = 4096
CLUSTER = 8
TOPIC = 2 * BATCH  # rows of a topic: whole batch files, so that each batch file is written once
QUERIES = 5  # exact queries timed: each reads every batch file
RECALL_QUERIES = 200
DUPLICATES = ("duplicates-random", "duplicates", "duplicates-indexed")
MOMENT = 0.5  # the same-moment cosine the duplicates figures use: the synthetic clusters' mates (~0.6) are close


def _cluster_rows(start: int, stop: int, seed: int = 0) -> np.ndarray:
    """Rows ``start..stop`` of the synthetic collection (``start`` a multiple of TOPIC, so that whole topics are
    made at once from seeds of their own), float16, L2-normalised."""
    from imgq.alike.batchfile import normalised

    out = []
    for topic in range(start // TOPIC, -(-stop // TOPIC)):
        rng = np.random.default_rng([seed, topic])
        centre = rng.standard_normal(FEATURES, dtype=np.float32)
        centre /= np.linalg.norm(centre)
        points = centre + 1.9 * rng.standard_normal((TOPIC // CLUSTER, FEATURES), dtype=np.float32) / FEATURES ** 0.5
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        rows = (np.repeat(points, CLUSTER, axis=0)
                + 0.8 * rng.standard_normal((TOPIC, FEATURES), dtype=np.float32) / FEATURES ** 0.5)
        out.append(normalised(rows))
    whole = np.concatenate(out)
    offset = start - (start // TOPIC) * TOPIC
    return whole[offset:offset + stop - start]


def write_collection(root: str, n: int) -> str:
    """The job of ``n`` synthetic rows under ``root`` (written once); its id."""
    from imgq.alike.batchfile import BatchVectors, batch_files, write_batch

    job = f"synthetic{n}"
    if len(batch_files(root, job)) == -(-n // BATCH):
        return job
    rng = np.random.default_rng(1)
    for start in range(0, n, TOPIC):
        block = _cluster_rows(start, min(n, start + TOPIC))
        for offset in range(0, len(block), BATCH):
            rows = block[offset:offset + BATCH]
            first = start + offset
            image = np.arange(first, first + len(rows), dtype=np.int64)
            write_batch(root, job, first // BATCH, BatchVectors(
                image=image, path=np.array([f"/photos/{i:08d}.jpg".encode() for i in image], dtype=np.bytes_),
                embedding=rows, phash=rng.integers(0, 2**63, len(rows), dtype=np.int64).astype(np.uint64),
                content=rng.integers(0, 256, (len(rows), 16), dtype=np.uint8), model="resnet50",
                weights="imagenet"))
    return job


def _queries(n: int) -> list[int]:
    return sorted(np.random.default_rng(2).choice(n, RECALL_QUERIES, replace=False).tolist())


def _peaks() -> dict:
    import tracemalloc

    with open("/proc/self/status") as status:
        hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    traced = tracemalloc.get_traced_memory()[1]
    return {"peak_rss_mb": round(hwm / 1024, 1), "tracemalloc_peak_mb": round(traced / 2**20, 1)}


def child(what: str, root: str, job: str, out: str) -> dict:
    """One figure, in this (new) process."""
    import tracemalloc

    from imgq.alike.collection import open_collection
    from imgq.alike.search import build_index, index_file, top_k

    tracemalloc.start()
    collection = open_collection(root, [job])
    n = len(collection)
    queries = _queries(n)
    figures: dict = {"rows": n}
    started = time.perf_counter()
    if what == "exact":
        seconds = []
        for row in queries[:QUERIES]:
            begun = time.perf_counter()
            found = collection.find(job, row)
            assert found is not None
            top_k(collection, found[1], 10, exclude=[found[0]], approximate_above=n)
            seconds.append(time.perf_counter() - begun)
        figures.update(query_seconds_median=round(float(np.median(seconds)), 3),
                       query_seconds_max=round(max(seconds), 3))
        figures["truth"] = _truth(collection, queries)
    elif what == "build":
        figures.update(build_index(collection, index_file(collection)))
        figures["build_seconds"] = round(time.perf_counter() - started, 1)
    elif what == "approximate":
        with open(out) as file:
            truth = json.load(file)["truth"]
        seconds, recall, recall5 = [], [], []
        for number, row in enumerate(queries):
            found = collection.find(job, row)
            assert found is not None
            begun = time.perf_counter()
            hits = top_k(collection, found[1], 10, exclude=[found[0]], approximate_above=0)
            seconds.append(time.perf_counter() - begun)
            recall.append(len(set(hits.rows) & set(truth[number])) / 10)
            recall5.append(len(set(hits.rows[:5]) & set(truth[number][:5])) / 5)
        figures.update(query_seconds_median=round(float(np.median(seconds[1:] or seconds)), 4),
                       first_query_seconds=round(seconds[0], 3), recall_at_10=round(float(np.mean(recall)), 4),
                       recall_at_10_min=min(recall), recall_at_5=round(float(np.mean(recall5)), 4),
                       index_bytes=os.path.getsize(index_file(collection)))
    elif what in ("duplicates", "duplicates-random", "duplicates-indexed"):
        from imgq.alike.groups import Rules
        from imgq.alike.pairs import cosine_pairs
        from producer.alike.report import gather, indexed_pairs, member_rows

        rows = gather(root, [job])
        trained = what != "duplicates-random"
        rules = Rules(hash_bits=16, confirm=0.8 if trained else None, moment=MOMENT if trained else None)
        close = indexed_pairs(rows, collection) if what == "duplicates-indexed" else cosine_pairs
        count = [0]

        def counted(vectors, above):
            for pair in close(vectors, above):
                count[0] += 1
                yield pair
        members = member_rows(rows, rules, counted)
        figures["moment_pairs"] = count[0]
        figures.update(members=len(members), groups=len({m["group"] for m in members}),
                       seconds=round(time.perf_counter() - started, 1))
    figures.update(_peaks())
    return figures


def _truth(collection, queries: list[int]) -> list[list[int]]:
    """Exact top 10 of each query row (itself left out), all queries in one pass over the files."""
    vectors = np.stack([collection.find(collection.jobs[0], row)[1] for row in queries])
    best = [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in queries]
    for part, batch in collection.batches():
        scores = batch.embedding.astype(np.float32) @ vectors.T
        rows = np.arange(part.start, part.start + part.rows)
        for q, row in enumerate(queries):
            s = np.where(rows == row, -np.inf, scores[:, q])
            merged_rows = np.concatenate([best[q][0], rows])
            merged = np.concatenate([best[q][1], s])
            order = np.lexsort((merged_rows, -merged))[:10]
            best[q] = (merged_rows[order], merged[order])
    return [b[0].tolist() for b in best]


def _run_child(log, what: str, root: str, job: str, out: str) -> dict:
    from bench.run import measured

    def measure() -> dict:
        result = subprocess.run([sys.executable, "-m", "bench.similar", "child", what, root, job, out],
                                capture_output=True, text=True, check=False)
        if result.returncode:
            raise RuntimeError(f"{what} {job}: {result.stderr.strip().splitlines()[-1:]}")
        return json.loads(result.stdout)
    measure.__name__ = what
    return measured(log, measure)


@click.group(invoke_without_command=True)
@click.option("--sizes", default="100000,1000000", show_default=True)
@click.option("--duplicates-sizes", default="10000,30000", show_default=True)
@click.option("--modes", default=",".join(DUPLICATES), show_default=True)
@click.option("--root", default="/tmp/imgq-bench-similar", show_default=True)
@click.option("--output", default="bench-similar.json", show_default=True)
@click.option("--quiet-wait", type=float, default=30.0, show_default=True)
@click.pass_context
def main(ctx, sizes: str, duplicates_sizes: str, modes: str, root: str, output: str, quiet_wait: float) -> None:
    if ctx.invoked_subcommand:
        return
    import bench.run as run

    run.QUIET_WAIT, run.ATTEMPTS = quiet_wait, 1

    def log(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)

    results: dict = {"machine": run.machine(), "similar": {}, "duplicates": {}}
    for n in [int(s) for s in sizes.split(",") if s]:
        job = write_collection(root, n)
        truth_file = os.path.join(root, f"{job}.truth.json")
        exact = _run_child(log, "exact", root, job, truth_file)
        with open(truth_file, "w") as file:
            json.dump({"truth": exact.pop("truth")}, file)
        log(f"{n}: exact {exact}")
        build = _run_child(log, "build", root, job, truth_file)
        log(f"{n}: build {build}")
        approximate = _run_child(log, "approximate", root, job, truth_file)
        log(f"{n}: approximate {approximate}")
        results["similar"][n] = {"exact": exact, "build": build, "approximate": approximate}
        _save(output, results)
    for n in [int(s) for s in duplicates_sizes.split(",") if s]:
        job = write_collection(root, n)
        for what in [m for m in modes.split(",") if m in DUPLICATES]:
            if what == "duplicates-indexed" and not _index_exists(root, job):
                _run_child(log, "build", root, job, "")
            results["duplicates"].setdefault(n, {})[what] = figures = _run_child(log, what, root, job, "")
            log(f"{n}: {what} {figures}")
            _save(output, results)
    results["machine"]["load_average_after"] = os.getloadavg()
    _save(output, results)
    print(json.dumps(results, indent=1))


def _index_exists(root: str, job: str) -> bool:
    from imgq.alike.collection import open_collection
    from imgq.alike.search import index_file

    return os.path.exists(index_file(open_collection(root, [job])))


def _save(path: str, results: dict) -> None:
    with open(path, "w") as file:
        json.dump(results, file, indent=1)


@main.command("child")
@click.argument("what")
@click.argument("root")
@click.argument("job")
@click.argument("out")
def child_command(what: str, root: str, job: str, out: str) -> None:
    print(json.dumps(child(what, root, job, out)))


if __name__ == "__main__":
    main()
