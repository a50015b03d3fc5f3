"""Jobs made through the store without a producer or a worker: staged and committed as `imgq submit` does."""

from __future__ import annotations

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
