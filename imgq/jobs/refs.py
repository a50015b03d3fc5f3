"""Jobs as a user names them: an id, an unambiguous start of one (as git takes commits), or a job's name (the
NAME column of `imgq status`); and jobs that are no longer there because their retention passed.

One resolver, used by every command that takes a JOB argument: ``resolve(store, text)`` -> the job's id.
"""

from __future__ import annotations

import time

from imgq.results.store import JobNotFound, ResultStore

MIN_PREFIX = 4
# Characters of an id's start that may stand for it: fewer would match most jobs of a busy store.

CANDIDATES_SHOWN = 5

READ_CHUNK = 1000


class AmbiguousJob(JobNotFound):
    """``text`` names several jobs (a name given twice, or the start of several ids); ``candidates`` are
    their ids, newest first."""

    def __init__(self, text: str, candidates: list[tuple[str, str | None, float]], what: str):
        shown = ", ".join(f"{job} ({name}, {_time(created)})" if name != job else f"{job} ({_time(created)})"
                          for job, name, created in candidates[:CANDIDATES_SHOWN])
        more = f" and {len(candidates) - CANDIDATES_SHOWN} more" if len(candidates) > CANDIDATES_SHOWN else ""
        LookupError.__init__(self, f"{len(candidates)} jobs {what} {text!r}: {shown}{more}. Give one id.")
        self.job = text
        self.candidates = [job for job, _, _ in candidates]


class PrefixTooShort(JobNotFound):
    """``text`` starts a job's id but is shorter than MIN_PREFIX: not taken for the id, and the user is told why
    rather than that no such job exists."""

    def __init__(self, text: str):
        LookupError.__init__(self, f"{text!r} is too short to stand for a job id: give at least {MIN_PREFIX} "
                                   "characters of the id, the whole id or the job's name.")
        self.job = text


class JobExpired(JobNotFound):
    """The job was there and its retention has passed: its records are gone."""

    def __init__(self, job: str):
        LookupError.__init__(self, f"Job {job!r} has expired: a finished job is kept for its retention "
                                   "(--retention, IMGQ_RETENTION) and then forgotten with its records.")
        self.job = job


def resolve(store: ResultStore, text: str) -> str:
    """The id of the job ``text`` names: a job's id; else the name of exactly one job; else the start (at least
    MIN_PREFIX characters) of exactly one job's id.

    Raises AmbiguousJob (several match), PrefixTooShort (fewer than MIN_PREFIX characters that start an id),
    JobExpired (the id, or the only id it starts, is of a job whose retention passed: listed without its
    record, or remembered in Keys.expired) or JobNotFound; all are JobNotFound, whose message is one line."""
    if store.redis.exists(store.keys.job(text)):
        return text
    jobs = _jobs(store)  # newest first: (id, name or None when expired, created)
    named = [job for job in jobs if job[1] == text]
    if len(named) == 1:
        return named[0][0]
    if named:
        raise AmbiguousJob(text, named, "are named")
    if len(text) < MIN_PREFIX and any(job[0].startswith(text) and job[0] != text for job in jobs):
        raise PrefixTooShort(text)
    started = [job for job in jobs if job[0].startswith(text)] if len(text) >= MIN_PREFIX else []
    live = [job for job in started if job[1] is not None]
    if len(live) == 1:
        return live[0][0]
    if live:
        raise AmbiguousJob(text, live, "have ids starting")
    gone = {job[0] for job in started} | ({text} if any(job[0] == text for job in jobs) else set())
    if len(gone) == 1 or store.redis.zscore(store.keys.expired, text) is not None:
        raise JobExpired(gone.pop() if len(gone) == 1 else text)
    raise JobNotFound(text)


def _jobs(store: ResultStore) -> list[tuple[str, str | None, float]]:
    """Every listed job as (id, name, created), newest first; the name is None for a job whose record is gone
    (expired, not yet dropped from the list)."""
    found = []
    ids = store.redis.zrevrange(store.keys.jobs, 0, -1, withscores=True)
    for start in range(0, len(ids), READ_CHUNK):
        chunk = ids[start:start + READ_CHUNK]
        pipe = store.redis.pipeline(transaction=False)
        for job, _ in chunk:
            pipe.hget(store.keys.job(job), "name")
        found += [(job, name, created) for (job, created), name in zip(chunk, pipe.execute(), strict=True)]
    return found


def _time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
