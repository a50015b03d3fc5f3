"""The `imgq` command line. Commands only: the work is in producer.enqueue, producer.export,
producer.progress, producer.classify and imgq.store. Errors become one-line messages here and nowhere else.

Imports are kept light (no TensorFlow, Celery or rich at import time) so that `imgq --help` is instant.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import click
import redis

from imgq import queue
from imgq.layers import UnknownLayer, check_layers
from imgq.settings import Settings, env_var, mask_url
from imgq.store import JobNotFound, JobStatus, ResultStore
from producer import enqueue
from producer.dumps import DumpError, estimate_bytes, format_bytes, size_guard
from producer.export import FORMATS, output, writer_for
from producer.local import LocalServiceError


class CliGroup(click.Group):
    """Turns the errors a user can cause (or fix) into one line and exit code 1, without a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise click.ClickException(f"Cannot reach Redis at {_url(ctx)}: {_first_line(exc)}") from None
        except redis.AuthenticationError as exc:
            raise click.ClickException(f"Redis at {_url(ctx)} refused the credentials: {exc}") from None
        except (JobNotFound, enqueue.EmptySelection, TimeoutError, LocalServiceError, DumpError) as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            if _is_kombu_connection_error(exc):
                raise click.ClickException(f"Cannot reach the broker at {_url(ctx)}: {_first_line(exc)}") from None
            raise


def _url(ctx) -> str:
    settings = ctx.obj if isinstance(ctx.obj, Settings) else None
    return mask_url(settings.broker_url) if settings else "(unknown)"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _is_kombu_connection_error(exc: BaseException) -> bool:
    kombu_exceptions = sys.modules.get("kombu.exceptions")
    return bool(kombu_exceptions) and isinstance(exc, kombu_exceptions.OperationalError)


def setting_option(*decls: str, setting: str, help: str, **kwargs):
    """An option that overrides the setting ``setting`` (itself read from IMGQ_<SETTING>)."""
    default = getattr(Settings(), setting)
    shown = f"; default: {default}" if default not in ("", ()) else ""
    return click.option(*decls, setting, default=None, help=f"{help} [env: {env_var(setting)}{shown}]", **kwargs)


def with_overrides(ctx: click.Context, **overrides) -> Settings:
    """The group's settings with this command's options (None = not given) applied."""
    return dataclasses.replace(ctx.obj, **{k: v for k, v in overrides.items() if v is not None})


@click.group(cls=CliGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@setting_option("--broker-url", setting="broker_url", help="Redis URL of the Celery broker.")
@setting_option("--results-url", setting="results_url", help="Redis URL of the results store (default: the broker's).")
@setting_option("--namespace", setting="namespace", help="Prefix of imgq's Redis keys and name of its queue.")
@click.version_option(package_name="imgq")
@click.pass_context
def cli(ctx, broker_url, results_url, namespace):
    """imgq: classify many images with ResNet50 on Celery workers, through Redis.

    \b
    One machine, one command:   imgq classify ~/Photos
    A team, many machines:      imgq worker            (on each worker machine)
                                imgq submit ~/Photos --wait
                                imgq results JOB -o labels.csv --format csv
    """
    try:
        ctx.obj = Settings.from_env(broker_url=broker_url, results_url=results_url, namespace=namespace)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def submit_options(command):
    """The options that choose images and shape the job, shared by `submit` and `classify`."""
    decorators = [
        click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=str)),
        click.option("--recursive/--no-recursive", default=True, show_default=True,
                     help="Walk into sub-folders of the folders given."),
        click.option("--include", "includes", multiple=True, metavar="GLOB",
                     help="Take files in folders matching GLOB (repeatable) instead of the image extensions "
                          f"({', '.join(enqueue.DEFAULT_EXTENSIONS)})."),
        click.option("--from-file", type=click.File("r", encoding="utf-8", errors="surrogateescape"),
                     help="Read more paths from FILE, one per line ('-' for standard input)."),
        setting_option("--top-k", setting="top_k", type=click.IntRange(1, 1000), help="Labels kept per image."),
        setting_option("--batch-size", setting="batch_size", type=click.IntRange(1, 1024),
                       help="Images per task and forward pass."),
        click.option("--name", default="", help="A name for the job (default: its id)."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def selected_images(paths, recursive, includes, from_file):
    if not paths and from_file is None:
        raise click.UsageError("Give at least one PATH or --from-file.")
    sources = list(paths) + (list(enqueue.read_path_list(from_file)) if from_file else [])
    return enqueue.iter_images(sources, enqueue.Selection(recursive=recursive, includes=tuple(includes)))


def layer_names(ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    """Click callback: ``--activations`` values (repeatable, comma-separated) as checked layer names, in the
    model's order, at parse time, so an unknown name stops the command before anything is walked or queued."""
    try:
        return check_layers([name.strip() for value in values for name in value.split(",") if name.strip()])
    except UnknownLayer as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@submit_options
@click.option("--skip-known", "known", flag_value="skip", default="",
              help="Answer images already classified (same content, weights and top-k) from the content-hash "
                   "index, without a forward pass; copies within the job are classified once.")
@click.option("--force", "known", flag_value="refresh", help="Classify known images again and refresh the index.")
@click.option("--activations", multiple=True, metavar="LAYER[,LAYER...]", callback=layer_names,
              help="Dump these ResNet50 layers' outputs for every image (Keras names, see `imgq layers`).")
@click.option("--activations-dtype", type=click.Choice(["float16", "float32"]), default="float16",
              show_default=True, help="Type of the dumped values.")
@click.option("--yes", is_flag=True, help="Queue even when the dumps would take more than IMGQ_MAX_DUMP_BYTES.")
@click.option("--wait", "wait_", is_flag=True, help="Show progress until the job completes.")
@click.pass_context
def submit(ctx, paths, recursive, includes, from_file, top_k, batch_size, name, known, activations,
           activations_dtype, yes, wait_):
    """Queue the images under PATH... as one job and print its id (only the id, on stdout)."""
    settings = with_overrides(ctx, top_k=top_k, batch_size=batch_size)
    images = selected_images(paths, recursive, includes, from_file)
    store = ResultStore.from_settings(settings)
    store.ping()
    queue.check_broker(settings)
    guard = size_guard(activations, activations_dtype, settings.max_dump_bytes) if activations and not yes else None
    submitted = enqueue.submit(images, settings=settings, store=store, name=name, known=known,
                               activations=activations, activations_dtype=activations_dtype, limit_check=guard)
    click.echo(submitted.job)
    click.echo(f"Queued {submitted.total} images in {submitted.batches} batches.", err=True)
    if activations:
        size = format_bytes(estimate_bytes(submitted.total, activations, activations_dtype))
        click.echo(f"Activation dumps of {', '.join(activations)}: about {size}, under <dump root>/{submitted.job}/ "
                   f"of the workers.", err=True)
    if wait_:
        from producer.progress import wait

        _warn_if_no_worker(store)
        wait(store, submitted.job)


@cli.command()
@click.argument("job", required=False)
@click.option("--limit", default=20, show_default=True, help="Jobs listed without JOB.")
@click.option("--workers", "show_workers", is_flag=True, help="The live workers and the queue depth instead.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx, job, limit, show_workers, as_json):
    """Counts, rate, ETA and state of JOB; without JOB, a table of recent jobs."""
    store = ResultStore.from_settings(ctx.obj)
    if show_workers:
        _print_workers(store, ctx.obj, as_json)
        return
    statuses = [store.status(job)] if job else store.list_jobs(limit)
    if as_json:
        click.echo(json.dumps([_status_dict(s) for s in statuses] if not job else _status_dict(statuses[0])))
    elif job:
        for key, value in _status_dict(statuses[0]).items():
            click.echo(f"{key:>10}: {value}")
    else:
        _print_jobs(statuses)


def _warn_if_no_worker(store: ResultStore) -> None:
    if not store.workers():
        click.echo(f"No worker is alive in namespace {store.keys.ns!r}: start one with `imgq worker`.", err=True)


def _status_dict(s: JobStatus) -> dict:
    return {"id": s.id, "name": s.name, "state": s.state, "total": s.total, "done": s.processed,
            "ok": s.ok, "failed": s.failed, "rate": None if s.rate is None else round(s.rate, 2),
            "eta_s": None if s.eta is None else round(s.eta), "created": _time(s.created),
            "params": s.params}


def _time(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _print_jobs(statuses: list[JobStatus]) -> None:
    if not statuses:
        click.echo("No jobs yet.", err=True)
        return
    click.echo(f"{'JOB':<12}  {'NAME':<20}  {'STATE':<9}  {'DONE':>13}  {'FAILED':>6}  {'RATE':>8}  CREATED")
    for s in statuses:
        rate = f"{s.rate:.1f}/s" if s.rate else "-"
        click.echo(f"{s.id:<12}  {s.name[:20]:<20}  {s.state:<9}  {f'{s.processed}/{s.total}':>13}  "
                   f"{s.failed:>6}  {rate:>8}  {_time(s.created)}")


def _print_workers(store: ResultStore, settings: Settings, as_json: bool) -> None:
    workers = sorted(store.workers(), key=lambda w: w.get("hostname", ""))
    depth = store.redis.llen(queue.queue_key(settings))
    jobs = _jobs_in_flight(store)
    if as_json:
        click.echo(json.dumps({"queued_batches": depth, "workers": workers,
                               "jobs_in_flight": [_status_dict(s) for s in jobs]}))
        return
    click.echo(f"{depth} batches queued; {len(workers)} workers alive; {len(jobs)} jobs in flight.")
    for w in workers:
        rate = w.get("images_per_second")
        click.echo(f"  {w.get('hostname')} on {w.get('host')}, pid {w.get('pid')}: pool {w.get('pool')} "
                   f"x{w.get('concurrency', '?')}, {w.get('batches_in_hand', '?')} batches in hand, "
                   f"{'?' if rate is None else f'{rate:.1f}'} images/s over the last minute, "
                   f"{w.get('images_done', 0)} images done; {w.get('precision')} on {w.get('runtime', '?')}, "
                   f"weights {w.get('weights')}")
    for s in jobs:
        click.echo(f"  job {s.id} {s.state}: {s.processed}/{s.total} done, {s.failed} failed"
                   + (f" ({s.name})" if s.name and s.name != s.id else ""))


def _jobs_in_flight(store: ResultStore) -> list[JobStatus]:
    """The jobs neither done nor cancelled, oldest first."""
    statuses = []
    for job in store.active_jobs():
        try:
            statuses.append(store.status(job))
        except JobNotFound:  # deleted between the two reads
            continue
    return sorted((s for s in statuses if not s.finished), key=lambda s: s.created)


@cli.command()
@click.argument("job")
@click.option("--timeout", type=float, help="Give up after this many seconds (exit 1).")
@click.pass_context
def wait(ctx, job, timeout):
    """Show a progress bar until JOB completes."""
    from producer.progress import wait as wait_for

    store = ResultStore.from_settings(ctx.obj)
    if not store.status(job).finished:  # raises JobNotFound
        _warn_if_no_worker(store)
    final = wait_for(store, job, timeout=timeout)
    click.echo(f"Job {final.id} {final.state}: {final.ok} ok, {final.failed} failed of {final.total}.", err=True)


@cli.command()
@click.argument("job")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="jsonl", show_default=True)
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, writable=True),
              help="Write to FILE (atomically) instead of standard output.")
@click.option("--embeddings", "embeddings_out", type=click.Path(dir_okay=False, writable=True), metavar="FILE.npy",
              help="Write the avg_pool dumps as one (images, 2048) array and an index FILE.index.jsonl, "
                   "instead of the records (which then go to -o only).")
@click.pass_context
def results(ctx, job, fmt, out, embeddings_out):
    """Stream every result record of JOB, in submission order."""
    store = ResultStore.from_settings(ctx.obj)
    status = store.status(job)
    if not status.finished:
        click.echo(f"Job {job} is {status.state}: {status.processed} of {status.total} records so far.", err=True)
    if embeddings_out:
        _write_embeddings(store, job, embeddings_out, ctx.obj.effective_dump_root)
        if not out:
            return
    k = status.params.get("top_k", ctx.obj.top_k)
    with output(out) as file:
        n = writer_for(fmt, k)(store.iter_results(job), file)
    if out:
        click.echo(f"Wrote {n} records to {out}.", err=True)


@cli.command()
@click.argument("job")
@click.pass_context
def cancel(ctx, job):
    """Skip the remaining batches of JOB; results already written stay."""
    final = ResultStore.from_settings(ctx.obj).cancel(job)
    click.echo(f"Job {final.id} {final.state}: {final.processed} of {final.total} images have records.", err=True)


@cli.command()
@click.argument("job")
@click.pass_context
def delete(ctx, job):
    """Forget JOB: its record, results and batches (images and exports are not touched)."""
    ResultStore.from_settings(ctx.obj).delete(job)
    click.echo(f"Deleted job {job}.", err=True)


@cli.command()
@click.argument("job")
@click.pass_context
def requeue(ctx, job):
    """Queue again the batches of JOB whose images still lack a record (after a worker was lost).

    Safe to repeat: a batch delivered twice overwrites its records instead of adding to them.
    """
    settings = ctx.obj
    store = ResultStore.from_settings(settings)
    store.status(job)  # raises JobNotFound
    sent = queue.publish(store.unfinished_batches(job), settings)
    click.echo(f"Queued {sent} batches of job {job} again.", err=True)


def _write_embeddings(store: ResultStore, job: str, out: str, dump_root: str) -> None:
    from producer.embeddings import write_embeddings

    written = write_embeddings(store.iter_results(job), out, dump_root)
    click.echo(f"Wrote {written.rows} embeddings ({written.dtype}) to {written.path} and the index {written.index}; "
               f"{written.missing} images have none.", err=True)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@setting_option("--weights", setting="weights", help="imagenet, random[:SEED] or a .h5/.weights.h5/.keras file.")
@setting_option("--batch-size", setting="batch_size", type=click.IntRange(1, 1024), help="Images per forward pass.")
@setting_option("--metrics-port", setting="metrics_port", type=click.IntRange(0, 65535),
                help="Serve Prometheus metrics at http://0.0.0.0:PORT/metrics (0: off).")
@setting_option("--log-format", setting="log_format", type=click.Choice(["text", "json"]),
                help="Log lines as text, or one JSON object per line.")
@setting_option("--runtime", setting="runtime", type=click.Choice(["openvino", "tensorflow"]),
                help="What runs the model: openvino (converted once, cached) or tensorflow (CUDA GPUs).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker(ctx, weights, batch_size, metrics_port, log_format, runtime, celery_args):
    """Start a worker (extra arguments go to `celery worker`, e.g. --loglevel INFO)."""
    settings = with_overrides(ctx, weights=weights, batch_size=batch_size, metrics_port=metrics_port,
                              log_format=log_format, runtime=runtime)
    os.environ.update(settings.as_env())  # the worker app reads its settings from the environment
    from worker.__main__ import main as worker_main

    worker_main(list(celery_args))


@cli.command()
@submit_options
@setting_option("--weights", setting="weights", help="Weights of a worker started here.")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, writable=True),
              help="JSONL file of results [default: imgq-<job>.jsonl].")
@click.option("--embedded-redis/--no-embedded-redis", default=None,
              help="Start a private Redis-compatible server (default: only when none is configured or answering).")
@click.pass_context
def classify(ctx, paths, recursive, includes, from_file, top_k, batch_size, name, weights, out, embedded_redis):
    """Classify the images under PATH... on this machine, starting whatever is missing, into a JSONL file."""
    from producer.classify import run_classify

    settings = with_overrides(ctx, top_k=top_k, batch_size=batch_size, weights=weights)
    broker_configured = bool(os.environ.get(env_var("broker_url"))) or ctx.parent.params.get("broker_url")
    images = selected_images(paths, recursive, includes, from_file)
    run_classify(images, settings, name=name, out=out, embedded=embedded_redis,
                 broker_configured=bool(broker_configured))


# They use the group's settings and errors above.
from producer.report_cli import layers, report, show  # noqa: E402
from producer.schedule_cli import beat, schedule  # noqa: E402

for command in (layers, report, show, schedule, beat):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="imgq")


if __name__ == "__main__":
    main()
