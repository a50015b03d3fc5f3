"""Parquet sink files that outlive their job, and removing them (imgq/results/sink.py holds the files themselves).

A sink job's files are on the workers' side (``IMGQ_SINK_DIR``), which the machine deleting a job may not
see, and a batch in a worker's hands may write its file just after a delete. So the ids of sink jobs stay in
``Keys.sinks`` until their files are gone, and the reconciler (on a worker, every period) removes the files of
those whose job is gone, expired or deleted (``remove_gone_sinks``, called by ``ResultStore.forget_expired``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from imgq.keys import Keys
from imgq.results import sink

CHUNK = 1000  # ids per Redis round trip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SinkLeft:
    """What a delete left of a sink job's files: ``elsewhere`` counted batch files that were not in this
    machine's sink folder ``folder``, and ``error``, why files there could not be removed (None: they were)."""

    folder: str = ""
    elsewhere: int = 0
    error: str | None = None


def remove_gone_sinks(client: redis.Redis, keys: Keys, sink_dir: str) -> int:
    """Remove from ``sink_dir`` the files of the jobs in ``Keys.sinks`` whose job hash is gone, then their ids;
    returns how many jobs. Files that cannot be removed are logged and tried again next time. ``client``
    answers str."""
    removed = 0
    jobs = list(client.sscan_iter(keys.sinks, count=CHUNK))
    for start in range(0, len(jobs), CHUNK):
        chunk = jobs[start:start + CHUNK]
        pipe = client.pipeline(transaction=False)
        for job in chunk:
            pipe.exists(keys.job(job))
        for job, exists in zip(chunk, pipe.execute(), strict=True):
            if exists:
                continue
            try:
                sink.remove_job(sink_dir, job)
            except ValueError:  # not a job id: nothing of it can be on disk
                pass
            except OSError as exc:
                log.warning("Cannot remove the sink files of job %s: %s", job, exc)
                continue
            client.srem(keys.sinks, job)
            removed += 1
    return removed
