"""Schedules: folders scanned again and again, each tick submitting only what is new or changed.

A schedule is data in Redis, in two parts:

- its celery-redbeat entry (under ``Keys.redbeat_prefix``, in the broker's Redis): when to fire the task
  ``TASK_SCHEDULED_SCAN`` with the schedule's name, and whether it is enabled. `imgq beat` reads the entries
  at every loop, so a schedule added, paused or removed while beat runs takes effect without a restart;
- imgq's own definition (``Keys.schedule``, next to the results): paths, selection, submit options, the
  paused flag, the job in flight, and its recent runs (``Keys.schedule_runs``).

One tick (imgq/schedules/tick.py), fired by beat on a worker or by `imgq schedule run`: settle the previous run's job
if it has finished, walk the paths, submit the new and changed files (imgq/schedules/scan_state.py) as an ordinary job
named after the schedule (``params.schedule`` links it), and record the run. A tick while the previous job
is still running submits nothing and is recorded as skipped: the next tick after that job finishes picks up
everything that changed meanwhile, and a backlog is not piled on workers that are already behind.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace

from imgq.celery_config import queue_name
from imgq.contract import MODEL_NAME, NAME, TASK_SCHEDULED_SCAN
from imgq.keys import Keys
from imgq.results.store import ResultStore
from imgq.schedules.beat import beat_app
from imgq.schedules.scan_state import PARTS as SCAN_PARTS
from imgq.settings import Settings, env_var, format_seconds, parse_duration
from imgq.storage.selection import PathFilter

CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")

RUNS_KEPT = 100  # recent runs listed by `imgq schedule show`
MAX_EVERY = 365 * 86400
# The longest interval: a year. Longer is no schedule (and celery's timedelta overflows past 999999999 days).


class ScheduleError(LookupError):
    """A schedule that is not there, or already is."""


class ScheduleNotFound(ScheduleError):
    def __init__(self, name: str):
        super().__init__(f"No schedule {name!r}.")


class ScheduleExists(ScheduleError):
    def __init__(self, name: str):
        super().__init__(f"Schedule {name!r} exists: remove it first, or give --replace.")


def check_name(name: str) -> str:
    """Returns ``name``; raises ValueError unless it is 1-64 letters, digits, '.', '_' or '-'."""
    if not NAME.fullmatch(name):
        raise ValueError(f"A schedule name is 1-64 letters, digits, '.', '_' or '-'. Received: {name!r}")
    return name


def parse_every(text: str) -> int:
    """Seconds of an interval written as any duration is (imgq.settings.parse_duration: ``90``, ``30s``,
    ``15m``, ``1h``, ``1d``), from 1 second to MAX_EVERY; raises ValueError."""
    return check_every(parse_duration(text), text)


def check_every(seconds: int, text: str | None = None) -> int:
    """Returns ``seconds``; raises ValueError unless it is from 1 to MAX_EVERY (``text``: as the user wrote it)."""
    if not 1 <= seconds <= MAX_EVERY:
        raise ValueError(f"An interval is from 1s to {format_seconds(MAX_EVERY)}. "
                         f"Received: {text if text is not None else seconds!r}")
    return seconds


def check_not_too_often(seconds: int, floor: int) -> int:
    """Returns ``seconds``; raises ValueError when it is under ``floor`` (IMGQ_SCHEDULE_MIN_EVERY, a minute by
    default: imgq/settings.py says why)."""
    if seconds < floor:
        raise ValueError(f"{format_seconds(seconds)} is too often: a folder is scanned at most every "
                         f"{format_seconds(floor)} ({env_var('schedule_min_every')}): give --every "
                         f"{format_seconds(floor)} or more (`imgq schedule run` scans one now)")
    return seconds


def parse_cron(text: str):
    """A celery crontab from the 5 fields ``minute hour day-of-month month day-of-week``; raises ValueError."""
    from celery.schedules import crontab

    fields = text.split()
    if len(fields) != len(CRON_FIELDS):
        raise ValueError(f"Expected 5 cron fields (minute hour day-of-month month day-of-week). Received: {text!r}")
    try:
        return crontab(**dict(zip(CRON_FIELDS, fields, strict=True)))
    except Exception as exc:  # crontab raises ValueError or its own ParseException
        raise ValueError(f"Invalid cron expression {text!r}: {exc}") from None


@dataclass(frozen=True)
class Schedule:
    """A schedule's definition. Exactly one of ``every`` (seconds) and ``cron`` (5 fields, UTC) is set."""

    name: str
    paths: tuple[str, ...]
    every: int | None = None
    cron: str | None = None
    recursive: bool = True
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    top_k: int = 5
    batch_size: int = 32
    max_retries: int = 3
    paused: bool = False
    created: float = 0.0
    pending_job: str | None = None
    head: str = ""  # the digest of a head (imgq/labels/heads.py, shared in Redis) each tick's job applies
    model: str = MODEL_NAME
    # The name of the model its jobs ask for: its ticks go to that model's queue, its jobs to that model's
    # workers, and its scan state is that model's (imgq/schedules/scan_state.py).
    weights: str = ""
    # The key of the weights its jobs ask for (imgq/models/weights.py): only a worker with them takes them. "":
    # any worker of its model.
    precision: str = ""
    # The precision its jobs ask for (imgq.contract.PRECISIONS): only a worker serving it takes them. "": any.
    embeddings: bool = False
    # Its jobs keep each image's embedding and hashes (imgq/alike/batchfile.py), for `imgq similar --schedule` and
    # `imgq duplicates --schedule`, which search its jobs as one collection.

    @property
    def when(self) -> str:
        return f"every {format_seconds(self.every)}" if self.every else f"cron {self.cron} (UTC)"

    @property
    def path_filter(self) -> PathFilter:
        return PathFilter(recursive=self.recursive, includes=self.includes, excludes=self.excludes)

    def celery_schedule(self):
        """What redbeat fires on: an interval or a crontab."""
        from celery.schedules import schedule

        return schedule(run_every=self.every) if self.every else parse_cron(self.cron or "")

    def to_hash(self) -> dict[str, str]:
        data = asdict(self)
        data.update(paths=json.dumps(self.paths), includes=json.dumps(self.includes),
                    excludes=json.dumps(self.excludes), every=self.every or "", cron=self.cron or "",
                    recursive=int(self.recursive), paused=int(self.paused), embeddings=int(self.embeddings))
        data.pop("pending_job")  # owned by the ticks (set_pending), never overwritten by an edit
        return {k: str(v) for k, v in data.items()}

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> Schedule:
        return cls(name=data["name"], paths=tuple(json.loads(data["paths"])), every=int(data["every"] or 0) or None,
                   cron=data["cron"] or None, recursive=data["recursive"] == "1",
                   includes=tuple(json.loads(data["includes"])),
                   excludes=tuple(json.loads(data.get("excludes", "[]"))), top_k=int(data["top_k"]),
                   batch_size=int(data["batch_size"]), max_retries=int(data["max_retries"]),
                   paused=data["paused"] == "1", created=float(data["created"]),
                   pending_job=data.get("pending_job") or None, model=data.get("model") or MODEL_NAME,
                   head=data.get("head", ""), weights=data.get("weights", ""),
                   precision=data.get("precision", ""), embeddings=data.get("embeddings") == "1")


class ScheduleBook:
    """The schedules of a namespace: definitions and runs in the results store, entries in redbeat."""

    def __init__(self, store: ResultStore, settings: Settings):
        self.store = store
        self.redis = store.redis
        self.keys: Keys = store.keys
        self.settings = settings
        self._app = None

    # -- definitions -----------------------------------------------------------------------------------

    def add(self, schedule: Schedule, replace_existing: bool = False) -> Schedule:
        """Store ``schedule`` and its beat entry. Raises ScheduleExists unless ``replace_existing``; a
        replaced schedule keeps its scan state, runs, creation time and job in flight."""
        try:
            old = self.get(schedule.name)
        except ScheduleNotFound:
            old = None
        if old is not None and not replace_existing:
            raise ScheduleExists(schedule.name)
        if schedule.every is not None:
            check_not_too_often(check_every(schedule.every), self.settings.schedule_min_every)
        schedule.celery_schedule()  # raises for a cron or interval beat could not fire, before anything is written
        schedule = replace(schedule, created=old.created if old else time.time())
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.schedule(schedule.name), mapping=schedule.to_hash())
        pipe.zadd(self.keys.schedules, {schedule.name: schedule.created}, nx=True)
        pipe.execute()
        try:
            self._save_entry(schedule, first=old is None)
        except BaseException:  # no half-made schedule: a definition without its beat entry would never fire
            if old is None:
                self.redis.delete(self.keys.schedule(schedule.name))
                self.redis.zrem(self.keys.schedules, schedule.name)
            else:
                self.redis.hset(self.keys.schedule(old.name), mapping=old.to_hash())
            raise
        return self.get(schedule.name)

    def get(self, name: str) -> Schedule:
        """Raises ScheduleNotFound."""
        data = self.redis.hgetall(self.keys.schedule(name))
        if "name" not in data:  # none, or only the job in flight of a tick that ended after a removal
            raise ScheduleNotFound(name)
        return Schedule.from_hash(data)

    def all(self) -> list[Schedule]:
        """Every schedule, oldest first."""
        schedules = []
        for name in self.redis.zrange(self.keys.schedules, 0, -1):
            try:
                schedules.append(self.get(name))
            except ScheduleNotFound:  # removed between the two reads
                continue
        return schedules

    def set_paused(self, name: str, paused: bool) -> Schedule:
        """Pause (beat stops firing it; a tick already queued skips) or resume. Raises ScheduleNotFound."""
        schedule = replace(self.get(name), paused=paused)
        self.redis.hset(self.keys.schedule(name), "paused", int(paused))
        self._save_entry(schedule, first=False)
        return schedule

    def remove(self, name: str) -> None:
        """Forget the schedule: its beat entry, definition, runs and scan state (of every model). Its jobs stay,
        and its job in flight, which no tick will settle now, gets its retention back (imgq/schedules/tick.py)."""
        schedule = self.get(name)  # raises ScheduleNotFound
        if schedule.pending_job:
            self.store.release_retention(schedule.pending_job)
        from redbeat import RedBeatSchedulerEntry

        RedBeatSchedulerEntry(name, app=self.app).delete()
        scan = [self.keys.scan(name, part) for part in SCAN_PARTS]
        scan += list(self.redis.scan_iter(match=self.keys.scan_pattern(name), count=1000))
        self.redis.delete(self.keys.schedule(name), self.keys.schedule_runs(name), self.keys.schedule_lock(name),
                          *scan)
        self.redis.zrem(self.keys.schedules, name)

    def set_pending(self, name: str, job: str | None) -> None:
        """The job in flight of the schedule (None: none). Nothing when the schedule was removed meanwhile."""
        if job is None:
            self.redis.hdel(self.keys.schedule(name), "pending_job")
        elif self.redis.exists(self.keys.schedule(name)):
            self.redis.hset(self.keys.schedule(name), "pending_job", job)

    # -- runs ------------------------------------------------------------------------------------------

    def record_run(self, name: str, run: dict) -> dict:
        """Add ``run`` to the schedule's history (the most recent RUNS_KEPT are kept); returns it."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(self.keys.schedule_runs(name), json.dumps(run))
        pipe.ltrim(self.keys.schedule_runs(name), 0, RUNS_KEPT - 1)
        pipe.execute()
        return run

    def tick_lock(self, name: str, seconds: int):
        """A Redis lock held by the one tick of ``name`` running (``acquire(blocking=False)``, ``reacquire``,
        ``release``): two ticks of a schedule never interleave."""
        return self.redis.lock(self.keys.schedule_lock(name), timeout=seconds)

    def runs(self, name: str, limit: int = RUNS_KEPT) -> list[dict]:
        """The schedule's recent runs, newest first."""
        return [json.loads(r) for r in self.redis.lrange(self.keys.schedule_runs(name), 0, limit - 1)]

    def jobs(self, name: str) -> list[str]:
        """The ids of the jobs its recent runs (the last RUNS_KEPT) submitted, oldest first: a job whose record
        expired is still named, its embedding files outlive it. Raises ScheduleNotFound."""
        self.get(name)
        named = [run["job"] for run in self.runs(name) if run.get("job")]
        return list(dict.fromkeys(reversed(named)))

    # -- beat entries ----------------------------------------------------------------------------------

    @property
    def app(self):
        """A Celery app configured like `imgq beat`, to read and write redbeat entries (created on use)."""
        if self._app is None:
            self._app = beat_app(self.settings)
        return self._app

    def _save_entry(self, schedule: Schedule, first: bool) -> None:
        from redbeat import RedBeatSchedulerEntry

        # A tick runs on a worker of the schedule's model: one that is alive to take the job it submits.
        options: dict[str, str | int] = {"queue": queue_name(self.settings, schedule.model)}
        if schedule.every:  # a tick stuck behind a backlog longer than its period is stale: drop it
            options["expires"] = schedule.every
        entry = RedBeatSchedulerEntry(schedule.name, TASK_SCHEDULED_SCAN, schedule.celery_schedule(),
                                      args=[schedule.name], options=options, enabled=not schedule.paused,
                                      app=self.app)
        if first and schedule.every:
            entry.last_run_at = None  # never run: an interval schedule fires at once, a cron one at its time
        entry.save()  # keeps the last run time of an existing entry

    def next_run(self, name: str) -> float | None:
        """When beat will fire the schedule next (UNIX time), from its entry; None when there is none."""
        try:
            entry = self.beat_entry(name)
        except KeyError:
            return None
        if entry.last_run_at is None:
            return time.time()  # never run: due now
        # From now, not from the last run as redbeat's own ``due_at`` adds it.
        remaining = entry.schedule.remaining_estimate(entry.last_run_at)
        return None if remaining is None else time.time() + max(remaining.total_seconds(), 0.0)

    def beat_entry(self, name: str):
        """The redbeat entry of the schedule (raises KeyError): for checks and tests."""
        from redbeat import RedBeatSchedulerEntry

        return RedBeatSchedulerEntry.from_key(self.keys.redbeat_prefix + name, app=self.app)
