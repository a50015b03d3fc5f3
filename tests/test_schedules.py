"""Schedules: parsing, the CLI (CliRunner) and ticks against a real Redis; then end to end with real beat
processes and a real worker."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from imgq.contract import TASK_SCHEDULED_SCAN, error_record, ok_record
from imgq.results.store import ResultStore
from imgq.schedules.schedule import ScheduleBook, ScheduleNotFound, check_name, format_seconds, parse_cron, parse_every
from imgq.schedules.tick import tick
from tests import imagegen
from tests.processes import imgq_cli

# -- parsing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("15m", 900), ("1h", 3600), ("1d", 86400),
                                               (" 2s ", 2), ("90", 90), ("365d", 365 * 86400)])
def test_intervals(text, seconds):
    assert parse_every(text) == seconds
    assert parse_every(format_seconds(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "-1m", "1.5h", "15 m", "1w", "m", "1h30m", "nan", "infd"])
def test_bad_intervals(text):
    with pytest.raises(ValueError, match="Expected seconds or a duration like 90s"):
        parse_every(text)


@pytest.mark.parametrize("text", ["0", "0m", "366d", "1000000000d", "99999999999999999999d", "9" * 5000])
def test_intervals_out_of_range(text):
    with pytest.raises(ValueError, match="An interval is from 1s to 365d"):
        parse_every(text)


@pytest.mark.parametrize("every", ["99999999999999999999d", "1000000000d", "366d", "0s"])
def test_an_interval_out_of_range_is_one_line_and_makes_no_schedule(run, photos, store, settings, every):
    result = run("schedule", "add", "photos", str(photos), "--every", every)
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert "is not from 1s to 365d" in result.stderr
    assert store.redis.keys(f"{settings.namespace}:*") == []


@pytest.mark.parametrize("every", ["1s", "1", "30s", "59s", "59"])
def test_an_interval_under_a_minute_is_refused_in_one_line_and_makes_no_schedule(run, photos, store, settings, every):
    # A folder walked every second floods the worker's queue with ticks and the runs kept with skipped ones
    # (issue 25.8): a minute is the floor by default, as it is cron's finest.
    result = run("schedule", "add", "photos", str(photos), "--every", every)
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.output
    assert ("a folder is scanned at most every 1m (IMGQ_SCHEDULE_MIN_EVERY): give --every 1m or more"
            in result.stderr)
    assert store.redis.keys(f"{settings.namespace}:*") == []


def test_an_interval_of_a_minute_is_the_floor(run, photos, store):
    assert run("schedule", "add", "photos", str(photos), "--every", "60s").exit_code == 0


def test_the_floor_is_a_setting(settings, photos, store):
    lowered = {"IMGQ_SCHEDULE_MIN_EVERY": "5s"}
    assert imgq_cli(settings, "schedule", "add", "photos", str(photos), "--every", "5s", env=lowered).exit_code == 0
    refused = imgq_cli(settings, "schedule", "add", "other", str(photos), "--every", "4s", env=lowered, check=False)
    assert refused.exit_code == 2 and "scanned at most every 5s (IMGQ_SCHEDULE_MIN_EVERY)" in refused.stderr


@pytest.mark.parametrize("every", [1, 59])
def test_the_book_refuses_an_interval_under_a_minute_and_writes_nothing(book, photos, store, settings, every):
    from imgq.schedules.schedule import Schedule

    with pytest.raises(ValueError, match="at most every 1m"):
        book.add(Schedule(name="photos", paths=(str(photos),), every=every))
    assert store.redis.keys(f"{settings.namespace}:*") == []


def test_the_book_refuses_an_interval_beat_cannot_fire_and_writes_nothing(book, photos, store, settings):
    from imgq.schedules.schedule import Schedule

    with pytest.raises(ValueError, match="An interval is from 1s"):
        book.add(Schedule(name="photos", paths=(str(photos),), every=10**20 * 86400))
    assert store.redis.keys(f"{settings.namespace}:*") == []


def test_cron_fields_are_minute_hour_day_month_weekday():
    cron = parse_cron("5 4 1 2 mon")
    assert (cron.minute, cron.hour, cron.day_of_month, cron.month_of_year, cron.day_of_week) == (
        {5}, {4}, {1}, {2}, {1})
    assert parse_cron("*/15 * * * *").minute == {0, 15, 30, 45}


@pytest.mark.parametrize("text", ["* * * *", "* * * * * *", "61 * * * *", "* 25 * * *", "x * * * *",
                                  "* * 0 * *"])
def test_bad_cron(text):
    with pytest.raises(ValueError, match="cron"):
        parse_cron(text)


@pytest.mark.parametrize(("name", "ok"), [("photos", True), ("a.b_c-1", True), ("a:b", False), ("", False),
                                          ("a b", False), ("x" * 65, False), ("é", False)])
def test_names(name, ok):
    if ok:
        assert check_name(name) == name
    else:
        with pytest.raises(ValueError, match="schedule name"):
            check_name(name)


# -- the CLI, and ticks without a worker ------------------------------------------------------------------------


@pytest.fixture
def run(settings):
    return lambda *args: imgq_cli(settings, *args, check=False)


@pytest.fixture
def book(settings, store):
    return ScheduleBook(store, settings)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.jpg").write_bytes(b"x" * (i + 1))
    return folder


def job_paths(store, job: str) -> list[str]:
    return [path for message in store.iter_batches(job) for _, path in message["images"]]


def classify(store, job: str, failing=()) -> None:
    """Write the records a worker would (errors for the paths in ``failing``)."""
    records = []
    for message in store.iter_batches(job):
        for image, path in message["images"]:
            record = ok_record(job, image, path, [], weights="w")
            if path in failing:
                record = error_record(job, image, path, "corrupt", "?", weights="w")
            records.append(record)
    store.mark_started(job)
    store.record_results(job, records)


def test_help(run):
    for command in [["schedule"], *[["schedule", c] for c in ("add", "list", "show", "pause", "resume", "remove",
                                                              "run")], ["beat"]]:
        result = run(*command, "--help")
        assert result.exit_code == 0 and "Usage: " in result.output


def test_add_stores_a_beat_entry_and_a_definition(run, book, photos, settings):
    result = run("schedule", "add", "photos", str(photos), "--every", "15m", "--top-k", "3", "--include", "*.jpg")
    assert result.exit_code == 0, result.output
    entry = book.beat_entry("photos")
    assert (entry.task, entry.args, entry.enabled) == (TASK_SCHEDULED_SCAN, ["photos"], True)
    assert entry.schedule.run_every == timedelta(minutes=15)
    assert entry.options == {"queue": settings.namespace, "expires": 900}
    assert entry.last_run_at is None  # an interval schedule fires at once
    schedule = book.get("photos")
    assert (schedule.paths, schedule.top_k, schedule.batch_size, schedule.includes) == (
        (str(photos),), 3, settings.batch_size, ("*.jpg",))
    assert schedule.max_retries == settings.scan_max_retries


def test_a_cron_schedule_waits_for_its_time(run, book, photos):
    assert run("schedule", "add", "nightly", str(photos), "--cron", "0 3 * * *").exit_code == 0
    entry = book.beat_entry("nightly")
    assert entry.schedule.hour == {3} and entry.schedule.minute == {0}
    assert entry.last_run_at is not None and entry.is_due()[0] is False
    assert book.get("nightly").when == "cron 0 3 * * * (UTC)"


@pytest.mark.parametrize(("args", "message"), [
    (["--every", "15m", "--cron", "0 * * * *"], "exactly one of --every and --cron"),
    ([], "exactly one of --every and --cron"),
    (["--every", "soon"], "Expected seconds or a duration like 90s"),
    (["--cron", "0 * * *"], "Expected 5 cron fields"),
])
def test_add_usage_errors(run, photos, args, message, store, settings):
    result = run("schedule", "add", "photos", str(photos), *args)
    assert result.exit_code == 2 and message in result.output
    assert store.redis.keys(f"{settings.namespace}:*") == []


def test_add_refuses_a_bad_name_and_a_missing_path(run, photos):
    assert run("schedule", "add", "a:b", str(photos), "--every", "1m").exit_code == 2
    assert "does not exist" in run("schedule", "add", "a", "/no/such/folder", "--every", "1m").output


def test_an_existing_name_is_refused_unless_replaced(run, book, photos):
    run("schedule", "add", "photos", str(photos), "--every", "1h")
    run("schedule", "run", "photos")
    result = run("schedule", "add", "photos", str(photos), "--every", "5m")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: Schedule 'photos' exists: remove it first, or give --replace."
    assert run("schedule", "add", "photos", str(photos), "--every", "5m", "--replace").exit_code == 0
    schedule = book.get("photos")
    assert schedule.every == 300 and schedule.pending_job  # its job in flight and runs are kept
    assert len(book.runs("photos")) == 1
    assert book.beat_entry("photos").schedule.run_every == timedelta(minutes=5)


def test_list_and_show(run, photos, store):
    run("schedule", "add", "photos", str(photos), "--every", "15m")
    run("schedule", "add", "nightly", str(photos), "--cron", "0 3 * * *", "--paused")
    job = run("schedule", "run", "photos").stdout.strip()
    table = run("schedule", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "WHEN", "STATE"]
    assert table[1].split()[:4] == ["photos", "every", "15m", "active"] and "submitted" in table[1]
    assert table[2].split()[:3] == ["nightly", "cron", "0"] and "paused" in table[2]
    listed = json.loads(run("schedule", "list", "--json").stdout)
    assert [s["name"] for s in listed] == ["photos", "nightly"] and listed[0]["last_run"]["job"] == job

    classify(store, job)
    shown = json.loads(run("schedule", "show", "photos", "--json").stdout)
    assert shown["runs"][0]["job_status"] == {"state": "done", "total": 5, "done": 5, "ok": 5, "failed": 0}
    assert shown["runs"][0]["found"]["new"] == 5 and shown["next_run"] is not None
    text = run("schedule", "show", "photos").stdout
    assert "every 15m" in text and "0 known, 0 with errors, 5 in flight" in text
    assert any(line.split()[2:5] == ["manual", "submitted", job] for line in text.splitlines())


def test_unknown_schedules_are_one_line(run):
    for command in ("show", "pause", "resume", "remove", "run"):
        result = run("schedule", command, "nope")
        assert result.exit_code == 1 and result.output.strip() == "Error: No schedule 'nope'."


def test_a_job_per_tick_with_only_what_is_new_or_changed(run, photos, store, book):
    (photos / "clip.MOV").write_bytes(b"a video")
    run("schedule", "add", "photos", str(photos), "--every", "1h", "--batch-size", "2")
    first = run("schedule", "run", "photos")
    job = first.stdout.strip()
    assert ("Queued 5 images (5 new, 0 changed, 0 retried) in 3 batches; skipped 1 file that is not an image "
            "(1 .MOV).") in first.stderr
    status = store.status(job)
    assert (status.name, status.total, status.params["schedule"], status.params["batch_size"]) == (
        "photos", 5, "photos", 2)
    assert (status.skipped_files, status.skipped_kinds) == (1, "1 .MOV")  # the job keeps it, as submit's do
    assert (book.runs("photos")[0]["skipped_files"], book.runs("photos")[0]["skipped_kinds"]) == (1, "1 .MOV")

    # While the job runs, a tick submits nothing.
    assert run("schedule", "run", "photos").stdout == ""
    assert book.runs("photos")[0]["reason"] == f"job {job} still queued"

    classify(store, job)
    empty = run("schedule", "run", "photos")
    assert empty.stdout == "" and "nothing new or changed; skipped 1 file that is not an image" in empty.stderr
    last = book.runs("photos")[0]
    assert last["outcome"] == "empty" and last["job"] is None
    assert last["settled"] == {"ok": 5, "failed": 0, "given_up": 0, "unrecorded": 0}

    for i in range(3):
        (photos / f"new{i}.jpg").write_bytes(b"new")
    (photos / "0.jpg").write_bytes(b"changed")
    second = run("schedule", "run", "photos").stdout.strip()
    assert sorted(job_paths(store, second)) == sorted(str(photos / n) for n in ["0.jpg", "new0.jpg", "new1.jpg",
                                                                              "new2.jpg"])
    assert book.runs("photos")[0]["found"] == {"new": 3, "changed": 1, "retried": 0, "unchanged": 4,
                                              "given_up": 0, "vanished": 0}
    assert [r["outcome"] for r in book.runs("photos")] == ["submitted", "empty", "skipped", "submitted"]


def test_a_failing_file_is_retried_a_bounded_number_of_times(run, photos, store, book):
    bad = str(photos / "3.jpg")
    run("schedule", "add", "photos", str(photos), "--every", "1h", "--max-retries", "1")
    classify(store, run("schedule", "run", "photos").stdout.strip(), failing={bad})
    retry = run("schedule", "run", "photos").stdout.strip()
    assert job_paths(store, retry) == [bad]
    assert book.runs("photos")[0]["found"]["retried"] == 1
    classify(store, retry, failing={bad})
    assert run("schedule", "run", "photos").stdout == ""  # given up until the file changes
    assert book.runs("photos")[0]["settled"]["given_up"] == 1


def test_a_deleted_job_is_forgotten_and_its_files_submitted_again(run, photos, store):
    run("schedule", "add", "photos", str(photos), "--every", "1h")
    store.delete(run("schedule", "run", "photos").stdout.strip())
    assert store.status(run("schedule", "run", "photos").stdout.strip()).total == 5


def test_a_tick_scans_only_inside_the_allowed_roots(run, photos, store, settings, tmp_path):
    """A tick on a worker reads what the worker may read: a schedule path outside IMGQ_ALLOWED_ROOTS (or a
    link inside that points out) is refused, named as given, and nothing is submitted."""
    run("schedule", "add", "photos", str(photos), "--every", "1h")
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "link").symlink_to(photos)
    run("schedule", "add", "linked", str(inside / "link"), "--every", "1h")
    roots = dataclasses.replace(settings, allowed_roots=(str(inside),))
    for name, path in (("photos", photos), ("linked", inside / "link")):
        ran = tick(name, settings=roots, store=store, trigger="manual")
        assert (ran["outcome"], ran["job"]) == ("skipped", None)
        assert ran["reason"] == f"{path} is outside this worker's allowed roots (IMGQ_ALLOWED_ROOTS)"
    assert store.list_jobs() == []
    allowed = tick("photos", settings=dataclasses.replace(settings, allowed_roots=(str(photos),)), store=store,
                   trigger="manual")
    assert allowed["outcome"] == "submitted"


def test_a_tick_that_died_after_committing_its_job_submits_nothing_twice(run, photos, store, book, settings,
                                                                        monkeypatch):
    """The tick names its job in flight before committing it: when it dies right after the commit (here, the
    commit returns by raising), the next tick finds that job instead of submitting the same files again."""
    run("schedule", "add", "photos", str(photos), "--every", "1h")
    commit = ResultStore.commit_job

    def commit_then_die(self, *args, **kwargs):
        commit(self, *args, **kwargs)
        raise RuntimeError("the tick's process died here")

    monkeypatch.setattr(ResultStore, "commit_job", commit_then_die)
    with pytest.raises(RuntimeError):
        tick("photos", settings=settings, store=store, trigger="manual")
    monkeypatch.undo()
    (job,) = [s.id for s in store.list_jobs()]
    assert book.get("photos").pending_job == job
    again = tick("photos", settings=settings, store=store, trigger="manual")
    assert (again["outcome"], again["reason"]) == ("skipped", f"job {job} still queued")
    assert [s.id for s in store.list_jobs()] == [job]


def test_a_job_outlasting_its_retention_is_settled_before_it_expires(run, photos, store, book, settings):
    """An interval at least as long as the retention: the job used to expire before the next tick, which
    settled nothing and classified the whole tree again, every tick. A tick's job is now kept until the next
    tick has read it, and its retention starts then (or when its schedule is removed)."""
    short = dataclasses.replace(settings, retention=1)
    run("schedule", "add", "photos", str(photos), "--every", "1h")
    first = tick("photos", settings=short, store=store, trigger="manual")
    classify(store, first["job"])
    assert store.status(first["job"]).state == "done"
    time.sleep(1.5)  # past its retention
    second = tick("photos", settings=short, store=store, trigger="manual")
    assert (second["outcome"], second["settled"]["ok"]) == ("empty", 5)  # was: submitted, 5 new
    assert 0 < store.redis.pttl(store.keys.job(first["job"])) <= 1000  # read: its retention runs now
    (photos / "new.jpg").write_bytes(b"new")
    third = tick("photos", settings=short, store=store, trigger="manual")
    assert third["found"]["new"] == 1
    assert "after its schedule's next tick" in json.loads(run("status", third["job"], "--json").stdout)["expires"]
    book.remove("photos")  # no tick will read its job in flight: it expires as any other job once done
    classify(store, third["job"])
    assert 0 < store.redis.pttl(store.keys.job(third["job"])) <= 1000


def test_pause_and_resume(run, photos, book, settings, store):
    run("schedule", "add", "photos", str(photos), "--every", "1h")
    assert run("schedule", "pause", "photos").exit_code == 0
    assert book.get("photos").paused and not book.beat_entry("photos").enabled
    assert "paused" in run("schedule", "list").stdout
    # A tick fired by beat just before the pause skips; `schedule run` runs a paused schedule all the same.
    assert tick("photos", settings=settings, store=store)["reason"] == "paused"
    assert run("schedule", "run", "photos").stdout.strip()
    assert run("schedule", "resume", "photos").exit_code == 0
    assert not book.get("photos").paused and book.beat_entry("photos").enabled


def test_two_ticks_at_once_submit_once(run, photos, store, settings, book):
    run("schedule", "add", "photos", str(photos), "--every", "1h")
    lock = store.redis.lock(store.keys.schedule_lock("photos"), timeout=10)
    assert lock.acquire(blocking=False)  # as if another tick were walking
    try:
        assert tick("photos", settings=settings, store=store)["outcome"] == "skipped"
    finally:
        lock.release()
    assert store.list_jobs() == [] and book.runs("photos")[0]["reason"].startswith("another tick")


def test_remove_forgets_everything_but_the_jobs(run, photos, store, settings):
    run("schedule", "add", "photos", str(photos), "--every", "1h")
    job = run("schedule", "run", "photos").stdout.strip()
    classify(store, job)
    run("schedule", "run", "photos")  # settles: the scan state now knows 5 files
    assert run("schedule", "remove", "photos").exit_code == 0
    left = {k for k in store.redis.keys(f"{settings.namespace}:*") if ":kombu:" not in k}
    assert not [k for k in left if "schedule" in k or "scan:" in k or "redbeat" in k]
    assert store.status(job).state == "done"
    with pytest.raises(ScheduleNotFound):
        tick("photos", settings=settings, store=store)  # a tick queued before the removal
    assert run("schedule", "list").stderr.strip() == "No schedules yet."


# -- end to end: real beats, a real worker ---------------------------------------------------------------------

INTERVAL = 2  # seconds between ticks
BEAT_ENV = {"IMGQ_BEAT_MAX_INTERVAL": "1", "IMGQ_BEAT_LOCK_TIMEOUT": "4"}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"Timed out after {timeout} s waiting for {what}")


@pytest.fixture
def beats(worker_settings, tmp_path):
    """Starts `imgq beat` processes on the worker's namespace; stops them (SIGTERM) at the end."""
    started = []

    def start() -> subprocess.Popen:
        log = open(tmp_path / f"beat{len(started)}.log", "wb")  # noqa: SIM115  (closed with the process)
        process = subprocess.Popen([sys.executable, "-m", "producer.cli", "beat", "--loglevel", "INFO"],
                                   env={**os.environ, **worker_settings.as_env(), **BEAT_ENV},
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started.append((process, log))
        return process

    yield start
    for process, log in started:
        stop(process)
        log.close()


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def scheduled(worker_settings):
    """Add a schedule in the worker's namespace (CliRunner); removed at the end, so no later beat fires it."""
    names = []

    def add(name: str, *args: str):
        # Ticks seconds apart, under the floor an operator gets (IMGQ_SCHEDULE_MIN_EVERY, a minute by default).
        imgq_cli(worker_settings, "schedule", "add", name, *args, env={"IMGQ_SCHEDULE_MIN_EVERY": "1"})
        names.append(name)

    yield add
    book = ScheduleBook(ResultStore.from_settings(worker_settings), worker_settings)
    for name in names:
        book.remove(name)


def cli_in(settings, *args):
    return imgq_cli(settings, *args)


@pytest.mark.slow
def test_beat_ticks_classify_only_new_and_changed_images(live_worker, worker_settings, beats, scheduled, tmp_path):
    store = ResultStore.from_settings(worker_settings)
    book = ScheduleBook(store, worker_settings)
    folder = tmp_path / "uploads"
    folder.mkdir()
    for i in range(6):
        imagegen.save(folder / f"{i}.png", size=(64, 64), seed=i)
    scheduled("uploads", str(folder), "--every", f"{INTERVAL}s")
    beats()

    def first_with(outcome: str, since: float):
        return next((r for r in reversed(book.runs("uploads")) if r["outcome"] == outcome and r["at"] > since),
                    None)

    first = wait_for(lambda: first_with("submitted", 0), 60, "the first tick's job")
    done = wait_for(lambda: store.status(first["job"]).finished and store.status(first["job"]), 90, "the first job")
    assert (done.total, done.ok, done.name, done.params["schedule"]) == (6, 6, "uploads", "uploads")

    # The next tick after the job finished has nothing new: no job, an empty run recorded as such.
    empty = wait_for(lambda: first_with("empty", done.finished_at), 30, "an empty tick")
    assert empty["settled"]["ok"] == 6 and empty["job"] is None

    # Pause (and let a tick in progress end) while the folder changes, so that one tick sees all changes.
    cli_in(worker_settings, "schedule", "pause", "uploads")
    wait_for(lambda: not store.redis.exists(store.keys.schedule_lock("uploads")), 30, "the tick in progress")
    for i in range(6, 9):
        imagegen.save(folder / f"{i}.png", size=(64, 64), seed=i)
    touched = folder / "0.png"
    imagegen.save(touched, size=(80, 80), seed=0)
    os.utime(touched, (time.time() + 5, time.time() + 5))
    resumed = time.time()
    cli_in(worker_settings, "schedule", "resume", "uploads")

    second = wait_for(lambda: first_with("submitted", resumed), 30, "the tick after the changes")
    assert second["found"]["new"] == 3 and second["found"]["changed"] == 1
    done = wait_for(lambda: store.status(second["job"]).finished and store.status(second["job"]), 60, "the job")
    assert (done.total, done.ok) == (4, 4)
    assert sorted(r["path"] for r in store.iter_results(second["job"])) == sorted(
        str(folder / f"{i}.png") for i in (0, 6, 7, 8))
    jobs = [s.id for s in store.list_jobs(100) if s.params.get("schedule") == "uploads"]
    assert sorted(jobs) == sorted([first["job"], second["job"]])  # every other tick submitted nothing


SENDING = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/[^\]]*\] Scheduler: Sending due task twice ")


def sending_times(tmp_path: Path, beats: int) -> list[float]:
    """When the beats sent a tick of ``twice``, from their own lines (Celery's log format), in order."""
    lines = [line for i in range(beats) for line in (tmp_path / f"beat{i}.log").read_text().splitlines()]
    return sorted(datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() for line in lines
                  if (m := SENDING.match(line)))


def lock_holder(processes: list[subprocess.Popen], tmp_path: Path) -> int:
    """Index of the beat whose log says it holds the lock."""
    holders = [i for i in range(len(processes)) if "Acquired lock" in (tmp_path / f"beat{i}.log").read_text()]
    return holders[0] if len(holders) == 1 else -1


@pytest.mark.slow
def test_two_beats_fire_each_tick_once(live_worker, worker_settings, beats, scheduled, tmp_path):
    store = ResultStore.from_settings(worker_settings)
    book = ScheduleBook(store, worker_settings)
    empty = tmp_path / "empty"
    empty.mkdir()
    scheduled("twice", str(empty), "--every", f"{INTERVAL}s")
    processes = [beats(), beats()]
    wait_for(lambda: lock_holder(processes, tmp_path) >= 0, 30, "a beat holding the lock")
    holder = lock_holder(processes, tmp_path)
    wait_for(lambda: book.runs("twice"), 30, "the first tick")
    time.sleep(4 * INTERVAL)

    # The holder dies without releasing its lock: the other beat takes over once the lock has expired. It is
    # killed just after one of its ticks ran, an interval before its next, not between saying it sends a tick
    # and sending it (which would count a tick as sent that never was).
    ran = len(book.runs("twice"))
    wait_for(lambda: len(book.runs("twice")) > ran, 30, "a tick to run")
    processes[holder].send_signal(signal.SIGKILL)
    processes[holder].wait()
    killed_at = time.time()
    wait_for(lambda: any(r["at"] > killed_at + 1 for r in book.runs("twice")), 30, "a tick from the standby beat")
    time.sleep(2 * INTERVAL)
    stop(processes[1 - holder])
    sent = sending_times(tmp_path, 2)
    wait_for(lambda: len(book.runs("twice")) >= len(sent), 30, "the worker to run every tick sent")

    runs = list(reversed(book.runs("twice")))
    assert len(runs) == len(sent) >= 5  # every tick sent ran once
    assert {r["outcome"] for r in runs} == {"empty"}  # no tick met another one running
    # Each tick fired once, not once per beat: the times the beats sent them, from their own lines. The times
    # the worker ran them (the runs' "at") add the worker's delays, which on a busy machine can bring the runs of
    # two ticks sent an interval apart closer than half of it.
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    assert min(gaps) > INTERVAL / 2, gaps
    assert "Acquired lock" in (tmp_path / f"beat{1 - holder}.log").read_text()
