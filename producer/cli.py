"""The `imgq` command line. Commands only: the work is in imgq.storage.walk, imgq.jobs.submit,
imgq.results.store, producer.exports.export, producer.local.progress and producer.local.classify. Errors
become one-line messages here and nowhere else.

Imports are kept light (no TensorFlow, Celery or rich at import time) so that `imgq --help` is instant.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import sys
import time

import click
import redis

from imgq.contract import IMAGE_EXTENSIONS, MODEL_NAME
from imgq.jobs import queue
from imgq.jobs import submit as submission
from imgq.jobs.refs import resolve
from imgq.labels.heads import Head, refusal
from imgq.models.layers import UnknownLayer, check_layers, shapes_known
from imgq.redis_protocol import check_speaks_redis, not_redis_message
from imgq.results.job import JobStatus
from imgq.results.sink import DamagedSink, SinkFilesMissing, SinkNotRemovable
from imgq.results.store import JobNotFound, ResultStore
from imgq.settings import MAX_RETENTION, Settings, env_var, format_seconds, mask_url, parse_setting
from imgq.storage.destination import StoreError
from imgq.storage.errors import ListingError
from imgq.storage.files import WriteError
from imgq.storage.selection import IGNORE_MARKERS, PathFilter, Skipped
from imgq.storage.walk import iter_images, read_path_list
from producer.exports.dumps import DumpError, estimate_bytes, format_bytes, size_guard
from producer.exports.export import FILE_FORMATS, FORMATS, file_writer_for, output, with_min_score, writer_for
from producer.local.signals import Terminated
from producer.local.workers import LocalServiceError, worker_argv
from producer.options.head_options import head_option, refuse_foreign_head
from producer.options.model_choice import (
    ChosenModel,
    WeightsOption,
    check_local_weights,
    choose_model,
    feature_layer,
)
from producer.options.params import BoundedInt, Duration, FiniteFloat, broker_configured, embedded_asked
from producer.options.paths import ImageLocation, OutputFile
from producer.options.precision_choice import OTHER_PRECISION_WHY, asked_precision, precision_choice, refuse_int8_dumps
from producer.options.skipped import echo_queued
from producer.options.waiting import jobs_at, precision_wait, waiting_for, warn_if_no_worker, weights_wait
from producer.options.weights_choice import asked_weights, classify_weights
from producer.options.words import echo, plural, printable
from producer.tags.tagging import UntrainedWeights

MAX_LISTED = 1000  # `imgq status --limit`: more rows than anyone reads, few enough to read in one go
MAX_TIMEOUT = 365 * 86400.0  # `imgq wait --timeout`: a year; longer is no timeout (leave it out)


class OneLineUsageError(click.UsageError):
    """A usage error (a bad option value, a missing argument) shown as one line, exit code 2: the message and
    where the help is, without click's usage block before it."""

    def __init__(self, error: click.UsageError):
        super().__init__(printable(" ".join(error.format_message().split())), error.ctx)

    def show(self, file=None) -> None:
        where = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"Error: {self.format_message()}{where}", file=file, err=True)


class CliGroup(click.Group):
    """Turns the errors a user can cause (or fix) into one line and exit code 1, without a traceback; usage
    errors into one line and exit code 2. Either line is printable (imgq/text.py): it may name a path."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:  # the group's own options
            raise _one_line(exc) from None

    def resolve_command(self, ctx, args):
        # Known before the group's callback runs, which then starts no embedded Redis for a command's --help.
        ctx.meta["imgq.help"] = any(arg in ctx.help_option_names for arg in args[1:])
        return super().resolve_command(ctx, args)

    def invoke(self, ctx):
        try:
            return self._invoke(ctx)
        except click.UsageError:
            raise  # one line, printable already (OneLineUsageError), or the help click shows for a group alone
        except click.ClickException as exc:  # a path or a name in it reaches the terminal without control characters
            raise _printable(exc) from None

    def _invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # Ctrl-C: the shell's convention, 128 + SIGINT, and no traceback
            raise click.exceptions.Exit(130) from None
        except Terminated as exc:  # SIGTERM, SIGHUP where a command turned them into it: 128 + the signal
            raise click.exceptions.Exit(128 + exc.signum) from None
        except click.UsageError as exc:  # a command's options and arguments, and what its body refuses
            raise _one_line(exc) from None
        except Exception as exc:
            known = _known_error(ctx, exc)
            if known is None:  # a bug: its traceback is what finds it
                raise
            raise known from None


_USER_ERRORS = (JobNotFound, submission.EmptySelection, TimeoutError, LocalServiceError, DumpError,
                UntrainedWeights, WriteError, SinkFilesMissing, SinkNotRemovable, DamagedSink, ListingError,
                StoreError)


def _known_error(ctx, exc: Exception) -> click.ClickException | None:
    """The one line for an error a user can cause or fix (exit code 1), or None for any other."""
    foreign = not_redis_message(_broker_url(ctx), exc)
    if foreign is not None:  # first: redis-py reports some of these as connection errors or refusals
        return click.ClickException(_which_not_redis(ctx) or foreign)
    if isinstance(exc, redis.AuthenticationError):  # before ConnectionError, which it is (NOAUTH, WRONGPASS)
        return click.ClickException(f"Redis at {_url(ctx)} refused the credentials: {exc}")
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return click.ClickException(f"Cannot reach Redis at {_url(ctx)}: {_first_line(exc)}")
    if isinstance(exc, _USER_ERRORS):
        return click.ClickException(str(exc))
    refusal = _refusal(exc)
    if refusal is not None:
        return click.ClickException(f"Redis refused a command: {_reply(refusal)}"
                                    f"{_REFUSAL_HINTS.get(type(refusal), '')}")
    if _is_kombu_connection_error(exc):
        return click.ClickException(f"Cannot reach the broker at {_url(ctx)}: {_first_line(exc)}")
    return None


def _printable(error: click.ClickException) -> click.ClickException:
    """``error`` as a ClickException of the same exit code whose message holds no control character."""
    shown = click.ClickException(printable(error.format_message()))
    shown.exit_code = error.exit_code  # type: ignore[misc]  # a ClassVar in click's stubs; read from the instance
    return shown


def _one_line(error: click.UsageError) -> click.UsageError:
    if isinstance(error, (OneLineUsageError, *_HELP_ERRORS)):
        return error
    return OneLineUsageError(error)


_HELP_ERRORS = tuple(getattr(click.exceptions, name) for name in ("NoArgsIsHelpError",)
                     if hasattr(click.exceptions, name))
# `imgq` or `imgq schedule` alone: click (8.2+) shows the help through this "error", which stays as it is.


_REFUSAL_HINTS = {
    redis.exceptions.OutOfMemoryError: " (Redis is full: raise its maxmemory or free memory; imgq's keys must "
                                       "not be evicted, see docs/reliability.md)",
    redis.exceptions.NoPermissionError: " (the Redis user lacks a permission imgq needs: see its ACL)",
    redis.exceptions.ReadOnlyError: " (a read-only replica: point imgq at the primary)",
}


def _refusal(exc: BaseException) -> redis.ResponseError | None:
    """The Redis error reply (OOM, NOPERM, READONLY, WRONGTYPE, ...) behind ``exc``: itself, or what it was
    raised from (kombu wraps the replies the broker gets, ``raise ... from``). Not an error merely raised
    while one was being handled (``__context__``): that may be a bug, and keeps its traceback."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, redis.ResponseError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def _reply(error: redis.ResponseError) -> str:
    """The server's reply, without what redis-py puts before it for a pipeline ("Command # 3 (RPUSH key
    <the message>) of pipeline caused error: "), which would quote a whole batch message."""
    return _PIPELINE_NOTE.sub("", _first_line(error))


_PIPELINE_NOTE = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ")


def _url(ctx) -> str:
    settings = ctx.obj if isinstance(ctx.obj, Settings) else None
    return mask_url(settings.broker_url) if settings else "(unknown)"


def _which_not_redis(ctx) -> str | None:
    """The line naming the server that does not speak Redis, the broker's or the results store's, when they
    differ: the error itself does not say which one answered it."""
    settings = ctx.obj if isinstance(ctx.obj, Settings) else None
    if settings is None or settings.effective_results_url == settings.broker_url:
        return None
    return check_speaks_redis(settings, timeout=2.0)


def _broker_url(ctx) -> str:
    """The broker's URL as configured (not masked: not_redis_message masks it), or "(unknown)"."""
    return ctx.obj.broker_url if isinstance(ctx.obj, Settings) else "(unknown)"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _is_kombu_connection_error(exc: BaseException) -> bool:
    kombu_exceptions = sys.modules.get("kombu.exceptions")  # imported by whoever talked to the broker
    return kombu_exceptions is not None and isinstance(exc, kombu_exceptions.OperationalError)


def setting_option(*decls: str, setting: str, help: str, **kwargs):
    """An option that overrides the setting ``setting`` (itself read from IMGQ_<SETTING>)."""
    default = getattr(Settings(), setting)
    shown = f"; default: {default}" if default not in ("", ()) else ""
    return click.option(*decls, setting, default=None, help=f"{help} [env: {env_var(setting)}{shown}]", **kwargs)


def _parsed(setting: str, value: str | None):
    """``value`` of an option as the setting's variable would be parsed (None: not given)."""
    if value is None:
        return None
    try:
        return parse_setting(setting, value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def with_overrides(ctx: click.Context, **overrides) -> Settings:
    """The group's settings with this command's options (None = not given) applied. Settings that contradict
    each other (IMGQ_PRECISION=int8 with --runtime tensorflow) are a usage error: one line, exit code 2."""
    try:
        return dataclasses.replace(ctx.obj, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


# The commands that read jobs, which find the data `imgq classify` left in its embedded Redis by themselves.
EMBEDDED_READERS = ("status", "results", "report", "show", "tag", "cancel", "delete")
# The commands that start the embedded Redis themselves: `imgq --embedded-redis classify` is their own option.
EMBEDDED_STARTERS = ("classify", "learn")


@click.group(cls=CliGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@setting_option("--broker-url", setting="broker_url", help="Redis URL of the Celery broker.")
@setting_option("--results-url", setting="results_url", help="Redis URL of the results store (default: the broker's).")
@setting_option("--namespace", setting="namespace", help="Prefix of imgq's Redis keys and name of its queue.")
@click.option("--embedded-redis", is_flag=True,
              help="Use the embedded Redis of `imgq classify` (data under IMGQ_STATE_DIR): classify and learn start "
                   "it, the other commands read the jobs classify ran on it. Done "
                   f"without asking by {', '.join(EMBEDDED_READERS)} when no Redis is configured and none "
                   "answers at 127.0.0.1:6379.")
@click.version_option(package_name="imgq")
@click.pass_context
def cli(ctx, broker_url, results_url, namespace, embedded_redis):
    """imgq: classify many images with a Keras model (ResNet50 by default, or yours) on Celery workers, through Redis.

    \b
    One machine, one command:   imgq classify ~/Photos
    A team, many machines:      imgq worker            (on each worker machine)
                                imgq submit ~/Photos --wait
                                imgq results JOB -o labels.csv --format csv
    """
    try:
        ctx.obj = Settings.from_env(broker_url=broker_url, results_url=results_url, namespace=namespace)
    except ValueError as exc:  # one line naming the variable (and never a password: see check_redis_url)
        raise click.ClickException(str(exc)) from None
    if ctx.invoked_subcommand in EMBEDDED_STARTERS:
        return  # they start it, or reopen its data, themselves (embedded_asked)
    if (embedded_redis or ctx.invoked_subcommand in EMBEDDED_READERS) and not ctx.meta.get("imgq.help"):
        configured = broker_url or results_url or any(os.environ.get(env_var(s)) for s in ("broker_url", "results_url"))
        _use_embedded(ctx, asked=embedded_redis, configured=bool(configured))


def _use_embedded(ctx: click.Context, asked: bool, configured: bool) -> None:
    """Point the command at the embedded Redis's data (issue 20.6), started for the command's duration."""
    from producer.local.workers import reopen_embedded

    found = reopen_embedded(ctx.obj.state_dir, asked=asked, configured=configured)
    if found is None:
        return
    server, url = found
    ctx.call_on_close(server.stop)
    ctx.obj = dataclasses.replace(ctx.obj, broker_url=url, results_url="")
    if not asked:
        echo(f"No Redis is configured or answering at 127.0.0.1:6379: reading the embedded Redis's data in "
             f"{server.data_dir}.", err=True)


def submit_options(command):
    """The options that choose images and shape the job, shared by `submit` and `classify`."""
    decorators = [
        click.argument("paths", nargs=-1, type=ImageLocation()),
        click.option("--recursive/--no-recursive", default=True, show_default=True,
                     help="Walk into sub-folders of the folders given."),
        click.option("--include", "includes", multiple=True, metavar="GLOB",
                     help="Take files in folders matching GLOB (repeatable) instead of the image extensions "
                          f"({', '.join(IMAGE_EXTENSIONS)})."),
        click.option("--exclude", "excludes", multiple=True, metavar="GLOB",
                     help="Skip files and folders whose name or path matches GLOB (repeatable), e.g. 'thumbnails' "
                          f"or '*/cache/*'. Folders holding a {' or '.join(IGNORE_MARKERS)} file are always "
                          "skipped, with their sub-folders; so are hidden ones."),
        click.option("--from-file", type=click.File("r", encoding="utf-8", errors="surrogateescape"),
                     help="Read more paths from FILE, one per line ('-' for standard input)."),
        setting_option("--top-k", setting="top_k", type=BoundedInt(1, 1000), help="Labels kept per image."),
        setting_option("--batch-size", setting="batch_size", type=BoundedInt(1, 1024),
                       help="Images per task and forward pass."),
        click.option("--name", default="", help="A name for the job (default: its id)."),
        click.option("-v", "--verbose", is_flag=True,
                     help="List the files of the folders walked that were skipped for not being images."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def selected_images(paths, recursive, includes, excludes, from_file, skipped: Skipped | None = None):
    """The images the walk takes from ``paths`` and ``from_file``; ``skipped`` counts the files it leaves out."""
    if not paths and from_file is None:
        raise click.UsageError("Give at least one PATH or --from-file.")
    # Chained, not listed: a list file of a million paths is read as the walk goes, never held whole.
    sources = itertools.chain(paths, read_path_list(from_file) if from_file else ())
    return iter_images(sources, PathFilter(recursive=recursive, includes=tuple(includes), excludes=tuple(excludes)),
                       skipped)


def layer_names(ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    """Click callback: ``--activations`` values (repeatable, comma-separated) as a list of names; checked
    against the job's model by ``job_request``, before anything is walked or queued."""
    return tuple(name.strip() for value in values for name in value.split(",") if name.strip())


def job_options(command):
    """The options that choose what a job computes, shared by `submit` and `classify`."""
    decorators = [
        click.option("--model", metavar="NAME|FOLDER",
                     help="The model to classify with: a built-in name (resnet50, efficientnetv2b0, ...; see "
                          "docs/models.md), a model folder here (only its name is sent), or the name of a model a "
                          f"live worker serves. The job goes to the workers of that model only [env: "
                          f"{env_var('model')}; default: resnet50]."),
        click.option("--skip-known", "known", flag_value="skip", default="",
                     help="Answer images already classified (same content, model fed alike, weights and top-k) from "
                          "the content-hash index, without a forward pass; copies within the job are classified "
                          "once."),
        click.option("--force", "known", flag_value="refresh",
                     help="Classify known images again and refresh the index."),
        click.option("--activations", multiple=True, metavar="LAYER[,LAYER...]", callback=layer_names,
                     help="Dump these layers' outputs for every image (the model's Keras names, see `imgq layers "
                          "--model NAME`)."),
        click.option("--activations-dtype", type=click.Choice(["float16", "float32"]), default="float16",
                     show_default=True, help="Type of the dumped values."),
        click.option("--embeddings", is_flag=True,
                     help="Keep each image's embedding (the feature layer, L2-normalised, float16), perceptual hash "
                          "and content hash in one file per batch under the dump root, for `imgq duplicates` and "
                          "`imgq similar` (docs/duplicates.md)."),
        click.option("--yes", is_flag=True, help="Queue even when the dumps would take more than IMGQ_MAX_DUMP_BYTES."),
        click.option("--sink", is_flag=True,
                     help="Workers write the records as one Parquet file per batch into IMGQ_SINK_DIR instead of "
                          "Redis, which then holds only counts: for the largest jobs. `imgq results` reads them."),
        head_option("Also label each image with a head made by `imgq learn`, in the same forward pass "
                    "(records gain a `head` entry)."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def job_request(settings: Settings, known: str, activations: tuple[str, ...], activations_dtype: str,
                yes: bool, sink: bool, model: ChosenModel, head: Head | None = None, weights: str = "",
                embeddings: bool = False, precision: str = "") -> dict:
    """The keyword arguments of imgq.jobs.submit.submit for these options (with the dump size guard unless --yes);
    ``weights``: the key of the weights the job asks for ("": any); ``precision``: the precision it asks for
    ("": any). Raises click.BadParameter for a layer the model does not have (the names of a folder model's
    layers are checked by its worker: only it loads the model), and for activations asked of int8."""
    refuse_int8_dumps(precision, activations)
    try:
        activations = check_layers(list(activations), model.name)
    except UnknownLayer as exc:
        raise click.BadParameter(str(exc), param_hint="'--activations'") from None
    guard = (size_guard(activations, activations_dtype, settings.max_dump_bytes, model.name)
             if activations and not yes else None)
    return {"known": known, "activations": activations, "activations_dtype": activations_dtype, "limit_check": guard,
            "sink": sink, "model": model.name, "params": model.params(), "head": head, "weights": weights,
            "embeddings": embeddings, "precision": precision}


@cli.command()
@submit_options
@job_options
@setting_option("--retention", setting="retention", type=Duration(0, MAX_RETENTION),
                help="Keep the finished job's records in Redis this long (90s, 12h, 7d, at most "
                     f"{format_seconds(MAX_RETENTION)}; 0: until `imgq delete`).")
@setting_option("--weights", setting="job_weights", metavar="WEIGHTS",
                help="Only a worker with these weights takes the job (imagenet, random[:SEED] or a "
                     ".h5/.weights.h5/.keras file, hashed here); it waits until one is alive. Default: any worker "
                     "of its model.")
@setting_option("--precision", setting="job_precision", type=precision_choice(),
                help="Only a worker serving jobs at this precision takes the job (fp32, bf16 or int8; an INT8 worker "
                     "still calibrating on its first images classifies them in fp32, and their records say so); it "
                     "waits until one is alive. Default: any, whatever its worker runs.")
@click.option("--wait", "wait_", is_flag=True, help="Show progress until the job completes.")
@click.pass_context
def submit(ctx, paths, recursive, includes, excludes, from_file, top_k, batch_size, name, verbose, model, known,
           activations, activations_dtype, embeddings, retention, yes, sink, head, job_weights, job_precision,
           wait_):
    """Queue the images under PATH... as one job and print its id (only the id, on stdout)."""
    settings = with_overrides(ctx, top_k=top_k, batch_size=batch_size, retention=retention, model=model,
                              job_weights=job_weights, job_precision=job_precision)
    skipped = Skipped(keep_paths=verbose)
    images = selected_images(paths, recursive, includes, excludes, from_file, skipped)
    store = ResultStore.from_settings(settings)
    chosen = choose_model(settings.model, store)
    weights = asked_weights(settings.job_weights, chosen)
    precision = asked_precision(settings.job_precision)
    request = job_request(settings, known, activations, activations_dtype, yes, sink, chosen, head, weights,
                          embeddings, precision)
    activations = request["activations"]
    store.ping()
    queue.check_broker(settings)
    refuse_foreign_head(head, store, chosen.name, weights)
    try:
        submitted = submission.submit(images, settings=settings, store=store, name=name, skipped=skipped, **request)
    except submission.QueueingFailed as exc:
        click.echo(exc.job)  # the job exists and will complete: scripts must get its id, not submit it again
        raise click.ClickException(str(exc)) from None
    click.echo(submitted.job)
    echo_queued(f"Queued {plural(submitted.total, 'image')} in {plural(submitted.batches, 'batch')}.", skipped)
    if activations:
        size = (f"about {format_bytes(estimate_bytes(submitted.total, activations, activations_dtype, chosen.name))}"
                if shapes_known(chosen.name) else "a size only its worker knows")
        echo(f"Activation dumps of {', '.join(activations)}: {size}, under <dump root>/{submitted.job}/ "
             f"of the workers.", err=True)
    if wait_:
        from producer.local.progress import wait

        warn_if_no_worker(store, chosen.name, weights, precision)
        wait(store, submitted.job)


@cli.command()
@click.argument("job", required=False)
@click.option("--limit", type=BoundedInt(1, MAX_LISTED), default=20, show_default=True, help="Jobs listed without JOB.")
@click.option("--workers", "show_workers", is_flag=True, help="The live workers and the queue depth instead.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx, job, limit, show_workers, as_json):
    """Counts, rate, ETA and state of JOB; without JOB, a table of recent jobs."""
    store = ResultStore.from_settings(ctx.obj)
    if show_workers:
        _print_workers(store, as_json)
        return
    statuses = [store.status(resolve(store, job))] if job else store.list_jobs(limit)
    if as_json:
        rows = [{**_status_dict(s), "waiting": waiting_for(store, s) or None} for s in statuses]
        click.echo(json.dumps(rows if not job else rows[0]))
    elif job:
        for key, value in _status_dict(statuses[0]).items():
            echo(f"{key:>10}: {_shown(key, value)}")
        if waiting := waiting_for(store, statuses[0]):
            echo(f"{'waiting':>10}: {waiting}")
        if other := statuses[0].other_precisions:
            echo(f"{'note':>10}: records made in {', '.join(other)}, not {statuses[0].precision}: "
                 f"{OTHER_PRECISION_WHY}")
    else:
        _print_jobs(statuses, store)


def _status_dict(s: JobStatus) -> dict:
    return {"id": s.id, "name": s.name, "model": s.model, "model_ids": list(s.model_ids),
            "precisions": list(s.precisions), "state": s.state,
            "total": s.total, "done": s.processed,
            "ok": s.ok, "failed": s.failed, "rate": None if s.rate is None else round(s.rate, 2),
            "eta_s": None if s.eta is None else round(s.eta), "created": _time(s.created),
            "expires": _expiry(s), "params": s.params,
            "skipped": s.skipped_files, "skipped_kinds": s.skipped_kinds}


def _shown(key: str, value) -> str:
    """A value of ``_status_dict`` as `imgq status JOB` prints it: words, not Python's reprs."""
    if value is None or value == "":
        return "-"
    if key == "rate":
        return f"{value:.1f} images/s"
    if key == "eta_s":
        return f"{value} s"
    if key == "params":
        return ", ".join(f"{k} {_param(k, v)}" for k, v in value.items()) or "-"
    return str(value)


def _param(key: str, value) -> str:
    if key == "retention" and isinstance(value, int):
        return format_seconds(value)
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):  # a head: {name, digest, labels}
        return str(value.get("name", json.dumps(value)))
    return "yes" if value is True else str(value)


def _expiry(s: JobStatus) -> str:
    """When the store forgets the job: a time once it is finished, its retention before."""
    if s.expires_at is not None:
        return _time(s.expires_at)
    if not s.retention:
        return "never (until `imgq delete`)"
    if s.params.get("schedule"):  # kept until its schedule's next tick has read it (imgq/schedules/tick.py)
        return f"{format_seconds(s.retention)} after its schedule's next tick reads it"
    return "never" if s.finished else f"{format_seconds(s.retention)} after it finishes"


def _time(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _print_jobs(statuses: list[JobStatus], store: ResultStore) -> None:
    if not statuses:
        echo("No jobs yet.", err=True)
        return
    echo(f"{'JOB':<12}  {'NAME':<20}  {'STATE':<9}  {'DONE':>13}  {'FAILED':>6}  {'RATE':>8}  {'CREATED':<19}  "
         f"MODEL")
    workers = store.workers()
    served = {w.model for w in workers}
    for s in statuses:
        rate = f"{s.rate:.1f}/s" if s.rate else "-"
        echo(f"{s.id:<12}  {printable(s.name)[:20]:<20}  {s.state:<9}  {f'{s.processed}/{s.total}':>13}  "
             f"{s.failed:>6}  {rate:>8}  {_time(s.created):<19}  {s.model}")
    if waiting := sorted({s.model for s in statuses if not s.finished} - served):
        echo(f"No live worker serves model {', '.join(waiting)}: its jobs wait.", err=True)
    unserved = {(s.model, s.weights) for s in statuses if not s.finished and s.weights and s.model in served
                and not any(w.serves(s.model, s.weights) for w in workers)}
    for model, weights in sorted(unserved):
        echo(f"No live worker of model {model} has weights {weights}: its jobs that asked for them wait.",
                   err=True)
    at = {(s.model, s.weights, s.precision) for s in statuses if not s.finished and s.precision
          and (s.model, s.weights) not in unserved and s.model in served
          and not any(w.serves(s.model, s.weights, s.precision) for w in workers)}
    for model, weights, precision in sorted(at):
        echo(f"No live worker serves model {model}{f' with weights {weights}' if weights else ''} at {precision}: "
             f"its jobs that asked for it wait.", err=True)


def _print_workers(store: ResultStore, as_json: bool) -> None:
    beats = sorted(store.heartbeats(), key=lambda w: (w.model, w.hostname))
    workers = [w for w in beats if w.ready]
    not_ready = [w for w in beats if not w.ready]  # starting (what it is doing), or failed (why)
    jobs = _jobs_in_flight(store)
    depths = store.queue_depths([MODEL_NAME, *(w.model for w in workers), *(s.model for s in jobs)],
                                [(s.model, s.weights, s.precision) for s in jobs])
    served = {w.model for w in workers}
    if as_json:
        click.echo(json.dumps({"queued_batches": sum(depths.values()), "queued_by_model": depths,
                               "workers": [w.to_dict() for w in workers],
                               "not_ready": [w.to_dict() for w in not_ready],
                               "jobs_in_flight": [{**_status_dict(s), "waiting": waiting_for(store, s) or None}
                                                  for s in jobs]}))
        return
    waiting = {model: n for model, n in depths.items() if n}
    by_model = f" ({', '.join(f'{m} {n}' for m, n in waiting.items())})" if set(waiting) - {MODEL_NAME} else ""
    echo(f"{plural(sum(depths.values()), 'batch')} queued{by_model}; {plural(len(workers), 'worker')} alive; "
         f"{plural(len(jobs), 'job')} in flight.")
    for w in workers:
        echo(f"  {w.hostname} on {w.host}, pid {w.pid}: model {w.model_id or w.model}, pool {w.pool} "
             f"x{w.concurrency}, {plural(w.batches_in_hand, 'batch')} in hand, {w.images_per_second:.1f} "
             f"images/s over the last minute, {plural(w.images_done, 'image')} done; {w.precision} on "
             f"{w.runtime or '?'}{f' ({w.runtime_choice})' if w.runtime_choice else ''}, weights {w.weights}; "
             f"serves {jobs_at(w)}")
        for warning in w.warnings:
            echo(f"    WARNING: {warning}")
    for w in not_ready:
        echo(f"  {w.hostname} on {w.host}, pid {w.pid}: model {w.model_id or w.model}, {w.state}, not ready: "
             f"{w.detail}")
    for s in jobs:
        model = "" if s.model == MODEL_NAME else f", model {s.model}"
        stuck = "" if s.model in served else f"; waiting: no live worker serves model {s.model}"
        if s.model in served and not any(w.serves(s.model, s.weights) for w in workers):
            stuck = f"; waiting: {weights_wait(workers, s.model, s.weights)}"
        elif s.model in served and not any(w.serves(s.model, s.weights, s.precision) for w in workers):
            stuck = f"; {precision_wait(workers, s.model, s.weights, s.precision)}"
        echo(f"  job {s.id} {s.state}: {s.processed}/{s.total} done, {s.failed} failed"
                   + (f" ({s.name})" if s.name and s.name != s.id else "") + model + stuck)


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
@click.option("--timeout", type=FiniteFloat(0, MAX_TIMEOUT, low_open=True), metavar="SECONDS",
              help="Give up after this many seconds (exit 1).")
@click.pass_context
def wait(ctx, job, timeout):
    """Show a progress bar until JOB completes."""
    from producer.local.progress import wait as wait_for

    store = ResultStore.from_settings(ctx.obj)
    job = resolve(store, job)
    status = store.status(job)  # raises JobNotFound
    if not status.finished:
        warn_if_no_worker(store, status.model, status.weights, status.precision)
    try:
        final = wait_for(store, job, timeout=timeout)
    except KeyboardInterrupt:
        echo(f"Interrupted; job {job} goes on: `imgq wait {job}` to watch it again, `imgq cancel {job}` to "
             f"stop it.", err=True)
        raise
    echo(f"Job {final.id} {final.state}: {final.ok} ok, {final.failed} failed of {final.total}.", err=True)


@cli.command()
@click.argument("job")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="jsonl", show_default=True)
@click.option("-o", "--output", "out", type=OutputFile(),
              help="Write to FILE (atomically) instead of standard output.")
@click.option("--embeddings", "embeddings_out", type=OutputFile(), metavar="FILE.npy",
              help="Write the dumps of the model's feature layer (ResNet50's avg_pool: 2048 values) as one "
                   "(images, features) array and an index FILE.index.jsonl, instead of the records (which then "
                   "go to -o only).")
@click.option("--min-score", type=FiniteFloat(0, 1), metavar="S",
              help="Drop the labels scoring under S from each record's top_k (the stored record keeps them).")
@click.option("--groups", is_flag=True,
              help="Add each record's WordNet groups (animal, dog, vehicle, ...) with their scores, the sums of their "
                   "classes' scores; --min-score applies to them too. See docs/photo-libraries.md#groups.")
@click.pass_context
def results(ctx, job, fmt, out, embeddings_out, min_score, groups):
    """Stream every result record of JOB, in submission order."""
    if fmt in FILE_FORMATS and out in (None, "-"):
        raise click.ClickException(f"--format {fmt} writes a file: give -o FILE.")
    store = ResultStore.from_settings(ctx.obj)
    job = resolve(store, job)
    status = store.status(job)
    if not status.finished:
        echo(f"Job {job} is {status.state}: {status.processed} of {status.total} records so far.", err=True)
    elif status.expiring_soon():
        echo(f"Job {job} expires at {_time(status.expires_at)}: export what you need before then.", err=True)
    if embeddings_out:
        _write_embeddings(store, status, embeddings_out, ctx.obj.effective_dump_root)
        if not out:
            return
    k = status.params.get("top_k", ctx.obj.top_k)
    grouped = (min_score or 0.0) if groups else None  # the writers then drop the labels: the sums need them all
    records = store.iter_records(job) if groups else with_min_score(store.iter_records(job), min_score)
    if fmt in FILE_FORMATS:  # binary: written by path, row group by row group
        n = file_writer_for(fmt, k, grouped)(records, out)
        echo(f"Wrote {n} records to {out}.", err=True)
        return
    with output(out) as file:
        n = writer_for(fmt, k, grouped)(records, file)
    if out:
        echo(f"Wrote {n} records to {out}.", err=True)


@cli.command()
@click.argument("job")
@click.pass_context
def cancel(ctx, job):
    """Skip the remaining batches of JOB; results already written stay."""
    store = ResultStore.from_settings(ctx.obj)
    final = store.cancel(resolve(store, job))
    have = "has a record" if final.processed == 1 else "have records"
    echo(f"Job {final.id} {final.state}: {final.processed} of its {plural(final.total, 'image')} {have}.",
         err=True)


@cli.command()
@click.argument("job")
@click.pass_context
def delete(ctx, job):
    """Forget JOB: its record, results and batches (images and exports are not touched)."""
    store = ResultStore.from_settings(ctx.obj)
    job = resolve(store, job)
    left = store.delete(job)
    if left.error:
        raise click.ClickException(f"Deleted job {job}, but its Parquet files in {left.folder} could not be removed "
                                   f"({left.error}): the workers' reconciler tries again every "
                                   "IMGQ_RECONCILE_SECONDS; remove them by hand if it cannot.")
    echo(f"Deleted job {job}.", err=True)
    if left.elsewhere:
        echo(f"warning: {left.elsewhere} of its Parquet batch files are not in {left.folder} on this machine: "
             "the workers remove them from their sink folder at their next reconcile "
             "(IMGQ_RECONCILE_SECONDS).", err=True)


@cli.command()
@click.argument("job")
@click.option("--resume", is_flag=True,
              help="Of a cancelled job: take the cancellation back and queue its remaining batches.")
@click.pass_context
def requeue(ctx, job, resume):
    """Queue again the batches of JOB whose images still lack a record (after a worker was lost).

    Safe to repeat: a batch delivered twice overwrites its records instead of adding to them.
    """
    settings = ctx.obj
    store = ResultStore.from_settings(settings)
    job = resolve(store, job)
    status = store.status(job)
    if status.state == "done":
        echo(f"Job {job} is done: every image has a record, nothing to queue.", err=True)
        return
    if status.state == "cancelled":
        if not resume:  # its workers would skip every batch: queueing them would say "Queued" and do nothing
            raise click.ClickException(
                f"Job {job} is cancelled: its workers skip the {plural(status.total - status.processed, 'image')} "
                f"without a record. `imgq requeue {job} --resume` takes the cancellation back and queues them.")
        store.resume(job)
        echo(f"Job {job} resumed: it is no longer cancelled.", err=True)
    sent = queue.publish(queue.refs(store.unfinished_batches(job)), settings)
    echo(f"Queued {plural(sent, 'batch')} of job {job} again.", err=True)


def _write_embeddings(store: ResultStore, status: JobStatus, out: str, dump_root: str) -> None:
    """The feature layer's dumps as one array; for a job without them, its per-batch embedding files."""
    from imgq.alike.batchfile import batch_files
    from producer.exports.embeddings import NoEmbeddings, write_batch_embeddings, write_embeddings

    try:
        written = write_embeddings(store.iter_records(status.id), out, dump_root, feature_layer(status))
    except NoEmbeddings:
        if not batch_files(dump_root, status.id):
            raise
        written = write_batch_embeddings(store.iter_records(status.id), out, dump_root, status.id)
    echo(f"Wrote {written.rows} embeddings ({written.dtype}) to {written.path} and the index {written.index}; "
         f"{written.missing} images have none.", err=True)


def precision_options(command):
    """--precision and --calibration: how a worker (started here, or by `imgq worker`) computes."""
    command = setting_option("--calibration", setting="calibration", metavar="FOLDER",
                             type=click.Path(exists=True, file_okay=False, resolve_path=True),
                             help="With --precision int8: a folder of your own photos to quantize on (default: the "
                                  "first images the worker is sent).")(command)
    return setting_option("--precision", setting="precision", type=click.Choice(["fp32", "bf16", "int8"]),
                          help="fp32; bf16 (CPUs with AVX512_BF16 or AMX); int8 (OpenVINO, quantized on your "
                               "photos, used only where its labels agree with fp32's).")(command)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@setting_option("--model", setting="model", metavar="NAME|FOLDER",
                help="The one model this worker serves: a built-in name or a model folder; it takes only that "
                     "model's jobs.")
@setting_option("--weights", setting="weights", type=WeightsOption(),
                help="imagenet, random[:SEED] or a .h5/.weights.h5/.keras file.")
@setting_option("--batch-size", setting="batch_size", type=BoundedInt(1, 1024), help="Images per forward pass.")
@setting_option("--metrics-port", setting="metrics_port", type=BoundedInt(0, 65535),
                help="Serve Prometheus metrics at http://ADDRESS:PORT/metrics (0: off).")
@setting_option("--metrics-address", setting="metrics_address",
                help="IP address of the metrics server (0.0.0.0: every interface, as in a container).")
@setting_option("--log-format", setting="log_format", type=click.Choice(["text", "json"]),
                help="Log lines as text, or one JSON object per line.")
@setting_option("--runtime", setting="runtime", type=click.Choice(["auto", "openvino", "tensorflow"]),
                help="What runs the model: auto (the faster of the two on this CPU, measured once), openvino "
                     "(converted once, cached) or tensorflow (CUDA GPUs).")
@precision_options
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker(ctx, model, weights, batch_size, metrics_port, metrics_address, log_format, runtime, precision,
           calibration, celery_args):
    """Start a worker (extra arguments go to `celery worker`, e.g. --loglevel INFO)."""
    settings = with_overrides(ctx, model=model, weights=weights, batch_size=batch_size, metrics_port=metrics_port,
                              metrics_address=_parsed("metrics_address", metrics_address), log_format=log_format,
                              runtime=runtime, precision=precision, calibration=calibration)
    # The worker is another program (TensorFlow, Celery's worker): run it in this process's place, never import
    # it. Its settings travel in the environment, which it reads alone.
    os.environ.update(settings.as_env())
    # `python -m worker`, but never importing from the working folder (producer/local/workers.py, issue 19.2).
    os.execv(sys.executable, worker_argv(*celery_args))


@cli.command()
@submit_options
@job_options
@setting_option("--weights", setting="weights", metavar="WEIGHTS", type=WeightsOption(),
                help="The weights the job asks for: only a live worker with them takes it, else classify starts one "
                     "with them (imagenet, random[:SEED] or a .h5/.weights.h5/.keras file).")
@precision_options
@click.option("-o", "--output", "out", type=OutputFile(),
              help="File of results [default: imgq-<job>.jsonl, or .csv].")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True,
              help="Format of the results file.")
@click.option("--min-score", type=FiniteFloat(0, 1), metavar="S",
              help="Leave labels scoring under S out of the results file, its summary's top labels (and the "
                   "sidecars).")
@click.option("--tag", "tag_sidecars", is_flag=True,
              help="When the job is done, write each image's best label into its XMP sidecar, as `imgq tag JOB "
                   "--min-score S` would (refused for random weights unless --allow-untrained).")
@click.option("--allow-untrained", is_flag=True,
              help="With --tag: write the labels of random (untrained) weights, meaningless as they are.")
@click.option("--embedded-redis/--no-embedded-redis", default=None,
              help="Start a private Redis-compatible server (default: only when none is configured or answering).")
@click.pass_context
def classify(ctx, paths, recursive, includes, excludes, from_file, top_k, batch_size, name, verbose, model, known,
             activations, activations_dtype, embeddings, yes, sink, head, weights, precision, calibration, out, fmt,
             min_score, tag_sidecars, allow_untrained, embedded_redis):
    """Classify the images under PATH... on this machine, starting whatever is missing, into a results file."""
    from producer.local.classify import Output, run_classify
    from producer.tags.tagging import TagOptions

    settings = with_overrides(ctx, top_k=top_k, batch_size=batch_size, weights=weights, model=model,
                              precision=precision, calibration=calibration)
    # A worker started here loads the model here: a name of a model no worker serves yet must be a built-in
    # or a folder, checked before anything starts.
    chosen = choose_model(settings.model)
    check_local_weights(chosen, settings.weights, option=weights is not None)
    if head is not None and (problem := refusal(head, chosen.name, set())):  # the weights: by the worker
        raise click.ClickException(problem)
    skipped = Skipped(keep_paths=verbose)
    images = selected_images(paths, recursive, includes, excludes, from_file, skipped)
    # The job asks for the precision of the worker classify would start (and reuses only a live one serving it).
    request = {**job_request(settings, known, activations, activations_dtype, yes, sink, chosen, head,
                             embeddings=embeddings, precision=settings.precision),
               "skipped": skipped, "weights": classify_weights(settings.weights, chosen)}
    tagging = TagOptions(min_score=min_score or 0.0, allow_untrained=allow_untrained) if tag_sidecars else None
    run_classify(images, settings, name=name, embedded=embedded_asked(ctx, embedded_redis),
                 broker_configured=broker_configured(ctx), request=request,
                 output=Output(out, fmt, min_score, tagging))


# They use the group's settings and errors above.
from producer.alike_cli import duplicates, similar  # noqa: E402
from producer.learn_cli import learn  # noqa: E402
from producer.report_cli import layers, report, show  # noqa: E402
from producer.schedule_cli import beat, schedule  # noqa: E402
from producer.tag_cli import tag  # noqa: E402

for command in (layers, report, show, schedule, beat):
    cli.add_command(command)
cli.add_command(tag)  # producer/tag_cli.py
cli.add_command(learn)  # producer/learn_cli.py
cli.add_command(duplicates)  # producer/alike_cli.py
cli.add_command(similar)


def main() -> None:
    cli(prog_name="imgq")


if __name__ == "__main__":
    main()
