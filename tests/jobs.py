"""Jobs made through the store without a producer or a worker: staged and committed as `imgq submit` does."""

from __future__ import annotations

from pathlib import Path

from imgq.results.store import ResultStore


def commit_job(store: ResultStore, job: str, paths: list[str], *, batch_size: int = 8, top_k: int = 5,
               name: str = "", params: dict | None = None) -> list[dict]:
    """Stage the batch messages of ``paths`` (image ids 0..n-1) and commit the job; returns the messages."""
    messages = [{"v": 1, "job": job, "batch": number, "top_k": top_k,
                 "images": [[i, paths[i]] for i in range(start, min(start + batch_size, len(paths)))]}
                for number, start in enumerate(range(0, len(paths), batch_size))]
    store.stage_batches(job, messages)
    store.commit_job(job, name=name or job, total=len(paths), batches=len(messages),
                     params={"top_k": top_k, "batch_size": batch_size, **(params or {})})
    return messages


def write_embeddings(settings, job: str, paths: list[str], weights: str, vectors=None, model: str = "resnet50",
                     batch_size: int = 8) -> None:
    """Write ``job``'s embedding files as a worker would (imgq/alike/batchfile.py), image ids 0..n-1: each
    photo's pHash taken as the worker takes it (producer/alike/calibrate.py worker_hash, of the upright picture),
    the content hash of its bytes, and ``vectors`` (n, d; default: seeded random ones) L2-normalised."""
    import numpy as np

    from imgq.alike.batchfile import BatchVectors, normalised, write_batch
    from imgq.results.known import file_digest
    from producer.alike.calibrate import upright, worker_hash

    if vectors is None:
        vectors = np.random.default_rng(0).normal(size=(len(paths), 64))
    for batch, start in enumerate(range(0, len(paths), batch_size)):
        chosen = range(start, min(start + batch_size, len(paths)))
        with_bytes = [Path(paths[i]).read_bytes() for i in chosen]
        write_batch(settings.effective_dump_root, job, batch, BatchVectors(
            image=np.array(list(chosen), dtype=np.int64),
            path=np.array([paths[i].encode() for i in chosen], dtype=np.bytes_),
            embedding=normalised(np.asarray(vectors)[list(chosen)]),
            phash=np.array([worker_hash(upright(paths[i], settings)) for i in chosen], dtype=np.uint64),
            content=np.frombuffer(b"".join(file_digest(data) for data in with_bytes), dtype=np.uint8).reshape(-1, 16),
            model=model, weights=weights))
