"""`imgq schedule ...` and `imgq beat`: commands only; the work is in imgq.schedules.schedule, imgq.schedules.tick,
imgq.schedules.scan_state and imgq.schedules.beat.

Like producer.cli, nothing heavy is imported here: Celery and redbeat are imported by the commands that use
them, so `imgq --help` stays instant.
"""

from __future__ import annotations

import dataclasses
import json
import time

import click

from imgq.jobs import queue
from imgq.labels import heads
from imgq.redis_protocol import check_speaks_redis
from imgq.results.store import JobNotFound, ResultStore
from imgq.schedules.scan_state import ScanState
from imgq.schedules.schedule import (
    MAX_EVERY,
    RUNS_KEPT,
    Schedule,
    ScheduleBook,
    ScheduleError,
    check_name,
    check_not_too_often,
    parse_cron,
)
from imgq.schedules.tick import tick
from imgq.settings import Settings, env_var, format_seconds
from imgq.storage.locate import source_for
from imgq.storage.selection import skipped_phrase
from producer.options.head_options import head_option, refuse_foreign_head
from producer.options.model_choice import choose_model
from producer.options.params import BoundedInt, Duration
from producer.options.paths import ImageLocation
from producer.options.precision_choice import asked_precision, precision_choice
from producer.options.weights_choice import asked_weights
from producer.options.words import echo, plural


class ScheduleGroup(click.Group):
    """Turns a missing or duplicate schedule into one line and exit code 1 (the top-level group handles
    Redis being unreachable)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ScheduleError as exc:
            raise click.ClickException(str(exc.args[0])) from None


def _book(ctx: click.Context) -> ScheduleBook:
    settings: Settings = ctx.obj
    return ScheduleBook(ResultStore.from_settings(settings), settings)


def _validated(parse):
    """A click callback turning ``parse``'s ValueError into a usage error (None passes through)."""

    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        return value

    return callback


@click.group(cls=ScheduleGroup)
def schedule():
    """Scan folders on a schedule and classify only what is new or changed (run `imgq beat` to fire them).

    \b
    imgq schedule add uploads /data/uploads --every 15m
    imgq beat                       # one per namespace is enough; a second waits as a standby
    imgq schedule show uploads      # its recent runs, each an ordinary job
    """


@schedule.command()
@click.argument("name", callback=_validated(check_name))
@click.argument("paths", nargs=-1, required=True, type=ImageLocation())
@click.option("--every", type=Duration(1, MAX_EVERY), metavar="INTERVAL",
              help=f"Fire every INTERVAL: 15m, 1h, 1d (from {env_var('schedule_min_every')}, a minute by default, to "
                   f"{format_seconds(MAX_EVERY)}). The first tick comes at once.")
@click.option("--cron", callback=_validated(parse_cron), metavar="'M H DOM MON DOW'",
              help="Fire at the times of these 5 cron fields, in UTC, e.g. '0 * * * *'.")
@click.option("--recursive/--no-recursive", default=True, show_default=True,
              help="Walk into sub-folders of the folders given.")
@click.option("--include", "includes", multiple=True, metavar="GLOB",
              help="Take files in folders matching GLOB (repeatable) instead of the image extensions.")
@click.option("--exclude", "excludes", multiple=True, metavar="GLOB",
              help="Skip files and folders whose name or path matches GLOB (repeatable). Folders holding a "
                   ".nomedia or .imgqignore file are always skipped, with their sub-folders.")
@click.option("--top-k", type=BoundedInt(1, 1000), help=f"Labels kept per image [env: {env_var('top_k')}].")
@click.option("--batch-size", type=BoundedInt(1, 1024),
              help=f"Images per task and forward pass [env: {env_var('batch_size')}].")
@click.option("--max-retries", type=BoundedInt(0, 255),
              help="Ticks that submit again a file whose record is an error, before giving up on it until it "
                   f"changes (0: none) [env: {env_var('scan_max_retries')}; default: 3].")
@click.option("--model", metavar="NAME|FOLDER",
              help="The model its jobs ask for (as `imgq submit --model`): its ticks and jobs go to that model's "
                   f"workers, and what it has classified is kept per model [env: {env_var('model')}; default: "
                   "resnet50].")
@click.option("--paused", is_flag=True, help="Create it paused (`imgq schedule resume` starts it).")
@click.option("--replace", "replace_existing", is_flag=True,
              help="Change an existing schedule (its scan state and runs are kept).")
@head_option("Each tick's job also labels its images with this head (made by `imgq learn`).")
@click.option("--weights", metavar="WEIGHTS",
              help="Its jobs ask for these weights (as `imgq submit --weights`): only a worker with them takes them "
                   f"[env: {env_var('job_weights')}; default: any worker of its model].")
@click.option("--precision", type=precision_choice(),
              help="Its jobs ask for this precision (as `imgq submit --precision`): only a worker serving jobs at it "
                   f"takes them [env: {env_var('job_precision')}; default: any].")
@click.option("--embeddings", is_flag=True,
              help="Its jobs keep each image's embedding and hashes (as `imgq submit --embeddings`): `imgq similar "
                   "--schedule` and `imgq duplicates --schedule` search them as one collection.")
@click.pass_context
def add(ctx, name, paths, every, cron, recursive, includes, excludes, top_k, batch_size, max_retries, model, paused,
        replace_existing, head, weights, precision, embeddings):
    """Scan PATH... (folders, or s3://bucket/prefix) on a schedule (exactly one of --every and --cron); each tick
    submits a job of the images that are new or changed since the last scan."""
    if (every is None) == (cron is None):
        raise click.UsageError("Give exactly one of --every and --cron.")
    settings: Settings = ctx.obj
    if every is not None:
        try:
            check_not_too_often(every, settings.schedule_min_every)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--every'") from None
    book = _book(ctx)
    chosen = choose_model(model or settings.model, book.store)
    asked = asked_weights(settings.job_weights if weights is None else weights, chosen)
    definition = Schedule(
        name=name, paths=tuple(source_for(p).absolute(p) for p in paths), every=every,
        cron=" ".join(cron.split()) if cron else None, recursive=recursive, includes=tuple(includes),
        excludes=tuple(excludes),
        top_k=top_k or settings.top_k, batch_size=batch_size or settings.batch_size,
        max_retries=settings.scan_max_retries if max_retries is None else max_retries, paused=paused,
        model=chosen.name, head=_shared_head(ctx, head, chosen.name, asked), weights=asked,
        precision=asked_precision(settings.job_precision if precision is None else precision), embeddings=embeddings)
    saved = book.add(definition, replace_existing=replace_existing)
    echo(f"Schedule {saved.name}: {saved.when}{' (paused)' if saved.paused else ''}, "
         f"{len(saved.paths)} path(s), model {saved.model}. Run `imgq beat` to fire it.", err=True)


@schedule.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_(ctx, as_json):
    """The schedules, with their last run."""
    book = _book(ctx)
    rows = [(s, next(iter(book.runs(s.name, 1)), None)) for s in book.all()]
    if as_json:
        click.echo(json.dumps([{**_schedule_dict(s), "last_run": run} for s, run in rows]))
        return
    if not rows:
        echo("No schedules yet.", err=True)
        return
    echo(f"{'NAME':<20}  {'WHEN':<24}  {'STATE':<6}  {'LAST RUN':<19}  {'OUTCOME':<9}  PATHS")
    for s, run in rows:
        echo(f"{s.name[:20]:<20}  {s.when[:24]:<24}  {_state(s):<6}  {_time(run['at'] if run else None):<19}  "
             f"{(run or {}).get('outcome', '-'):<9}  {' '.join(s.paths)}")


@schedule.command()
@click.argument("name")
@click.option("--runs", "limit", type=BoundedInt(1, RUNS_KEPT), default=20, show_default=True,
              help="Recent runs listed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def show(ctx, name, limit, as_json):
    """A schedule, its scan state and its recent runs with their jobs' counts, newest first."""
    book = _book(ctx)
    s = book.get(name)
    scan = ScanState.from_settings(ctx.obj, name, s.model).counts()
    runs = [{**run, "job_status": _job_dict(book.store, run["job"])} for run in book.runs(name, limit)]
    next_run = None if s.paused else book.next_run(name)
    if as_json:
        click.echo(json.dumps({**_schedule_dict(s), "next_run": next_run, "scan": scan, "runs": runs}))
        return
    for key, value in [("name", s.name), ("paths", " ".join(s.paths)), ("when", s.when),
                       ("state", _state(s) + ("" if next_run is None else f", next run {_time(next_run)}")),
                       ("options", _options(s)), ("created", _time(s.created)),
                       ("scan", f"{scan['known']} known, {scan['errors']} with errors, {scan['pending']} in flight")]:
        echo(f"{key:>8}: {value}")
    _print_runs(runs)


@schedule.command()
@click.argument("name")
@click.pass_context
def pause(ctx, name):
    """Stop firing NAME until resumed (`imgq schedule run` still runs it)."""
    _book(ctx).set_paused(name, True)
    echo(f"Schedule {name} paused.", err=True)


@schedule.command()
@click.argument("name")
@click.pass_context
def resume(ctx, name):
    """Fire NAME again."""
    _book(ctx).set_paused(name, False)
    echo(f"Schedule {name} resumed.", err=True)


@schedule.command()
@click.argument("name")
@click.pass_context
def remove(ctx, name):
    """Forget NAME: its beat entry, definition, runs and scan state. Its jobs and results stay."""
    _book(ctx).remove(name)
    echo(f"Removed schedule {name}.", err=True)


@schedule.command()
@click.argument("name")
@click.option("--wait", "wait_", is_flag=True, help="Show progress until the job completes.")
@click.pass_context
def run(ctx, name, wait_):
    """Run one tick of NAME now, here: submit what is new or changed and print the job id (nothing when there
    is nothing new, or the previous run's job is still running)."""
    settings: Settings = ctx.obj
    store = ResultStore.from_settings(settings)
    store.ping()
    queue.check_broker(settings)
    result = tick(name, settings=settings, store=store, trigger="manual")
    skipped = skipped_phrase(result.get("skipped_files", 0), result.get("skipped_kinds", ""))
    if result["outcome"] != "submitted":
        reason = result["reason"] or f"nothing new or changed{f'; {skipped}' if skipped else ''}."
        echo(f"Schedule {name}: {result['outcome']}: {reason}", err=True)
        return
    found = result["found"]
    click.echo(result["job"])
    echo(f"Queued {plural(found['new'] + found['changed'] + found['retried'], 'image')} ({found['new']} new, "
         f"{found['changed']} changed, {found['retried']} retried) in {plural(result['batches'], 'batch')}"
         f"{f'; {skipped}' if skipped else ''}.", err=True)
    if wait_:
        from producer.local.progress import wait

        wait(store, result["job"])


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def beat(ctx, celery_args):
    """Start the beat that fires the schedules' ticks (extra arguments go to `celery beat`, e.g. --loglevel
    INFO). Several may run: one holds the lock and fires, the others wait to take over."""
    settings: Settings = ctx.obj
    if settings.beat_lock_timeout <= settings.beat_max_interval:
        raise click.UsageError(f"{env_var('beat_lock_timeout')} must exceed {env_var('beat_max_interval')} "
                               f"({settings.beat_lock_timeout} <= {settings.beat_max_interval}).")
    # Celery's beat logs a protocol error with its traceback, then goes on and exits 0: refused here instead.
    foreign = check_speaks_redis(settings)
    if foreign is not None:
        raise click.ClickException(foreign)
    from imgq.schedules.beat import run_beat

    run_beat(settings, list(celery_args))


# -- output ---------------------------------------------------------------------------------------------


def _state(s: Schedule) -> str:
    return "paused" if s.paused else "active"


def _time(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _shared_head(ctx, head, model: str, weights: str = "") -> str:
    """The head's digest, once it is in Redis for the ticks' jobs (refused when learned on another model)."""
    if head is None:
        return ""
    store = ResultStore.from_settings(ctx.obj)
    refuse_foreign_head(head, store, model, weights)
    return heads.share(store.redis, store.keys, head)


def _options(s: Schedule) -> str:
    parts = [f"model {s.model}", "recursive" if s.recursive else "not recursive", f"top-k {s.top_k}",
             f"batch-size {s.batch_size}", f"max-retries {s.max_retries}"] + ([f"head {s.head}"] if s.head else [])
    parts += [f"weights {s.weights}"] if s.weights else []
    parts += [f"precision {s.precision}"] if s.precision else []
    parts += ["embeddings"] if s.embeddings else []
    return ", ".join(parts + [f"include {g}" for g in s.includes] + [f"exclude {g}" for g in s.excludes])


def _schedule_dict(s: Schedule) -> dict:
    return {**dataclasses.asdict(s), "when": s.when, "state": _state(s)}


def _job_dict(store: ResultStore, job: str | None) -> dict | None:
    if job is None:
        return None
    try:
        status = store.status(job)
    except JobNotFound:
        return {"state": "deleted"}
    return {"state": status.state, "total": status.total, "done": status.processed, "ok": status.ok,
            "failed": status.failed}


def _print_runs(runs: list[dict]) -> None:
    if not runs:
        echo("No runs yet.")
        return
    echo(f"{'TIME':<19}  {'TRIGGER':<7}  {'OUTCOME':<9}  {'JOB':<12}  {'NEW':>5}  {'CHANGED':>7}  "
         f"{'RETRIED':>7}  {'STATE':<9}  {'DONE':>11}  {'OK':>6}  {'FAILED':>6}  NOTE")
    for run in runs:
        found = run["found"] or {}
        status = run["job_status"] or {}
        done = f"{status['done']}/{status['total']}" if "total" in status else "-"
        note = run["reason"] or (f"{found['given_up']} given up after errors" if found.get("given_up") else "")
        echo(f"{_time(run['at']):<19}  {run['trigger']:<7}  {run['outcome']:<9}  {run['job'] or '-':<12}  "
             f"{found.get('new', '-'):>5}  {found.get('changed', '-'):>7}  {found.get('retried', '-'):>7}  "
             f"{status.get('state', '-'):<9}  {done:>11}  {status.get('ok', '-'):>6}  "
             f"{status.get('failed', '-'):>6}  {note}".rstrip())
