"""`imgq classify`: one machine, one command. Use what runs, start what is missing, stop what was started."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import redis

from imgq.contract import MODEL_NAME, ResultRecord, is_untrained
from imgq.jobs import submit as submission
from imgq.labels import groups as wordnet_groups
from imgq.results.job import JobStatus
from imgq.results.store import JobNotFound, ResultStore
from imgq.settings import Settings, env_var, mask_url
from producer.exports.export import output as open_output
from producer.exports.export import with_min_score, writer_for
from producer.local.progress import wait
from producer.local.signals import Terminated, ended_by_signals
from producer.local.watch import Workers
from producer.local.workers import EmbeddedRedis, LocalServiceError, default_redis_answers
from producer.options.precision_choice import OTHER_PRECISION_WHY
from producer.options.skipped import echo_queued
from producer.options.words import echo, plural
from producer.tags.tagging import TagOptions, tag_records


@dataclass(frozen=True)
class Output:
    """Where a classified job goes: a results file (``path``, default ``imgq-<job>.<fmt>``) of ``fmt``,
    without the labels under ``min_score``; and XMP sidecars when ``tag`` says how. ``temporary``: the file is
    the caller's to read and remove (imgq learn's), so the summary does not offer it as the results."""

    path: str | None = None
    fmt: str = "jsonl"
    min_score: float | None = None
    tag: TagOptions | None = None
    temporary: bool = False


def run_classify(images: Iterable[str], settings: Settings, *, name: str, embedded: bool | None,
                 broker_configured: bool, request: dict | None = None, output: Output = Output()) -> JobStatus:
    """Submit, watch and export one job; returns its final status.

    ``embedded``: True starts a private Redis, False never does, None does so only when no broker is
    configured and nothing answers at the default address. ``request``: more keyword arguments of
    imgq.jobs.submit.submit (known, activations, ...); its ``weights`` is the key of the weights the job asks for
    (those of ``settings.weights``), None when this machine cannot name them (its worker then says why); its
    ``precision`` the one the job asks for (that of ``settings.precision``, or what the worker started here
    serves instead, said). Raises
    EmptySelection before starting anything when no image is selected; UntrainedWeights when asked to tag the
    labels of random weights (after the results file is written). The job ends with the run: whatever stops it
    before the job is done (Ctrl-C: KeyboardInterrupt; SIGTERM, SIGHUP: Terminated; its worker failing; any
    error) cancels the job first, then stops what classify started, and is raised.
    """
    images = walk_first(images)
    request = dict(request or {})
    with ended_by_signals(), ExitStack() as started:
        settings, server = _ensure_redis(settings, embedded, broker_configured, started)
        _say(_first_line(settings, server, broker_configured))  # which Redis, before anything is done in it
        store = ResultStore.from_settings(settings)
        store.ping()
        workers = Workers(settings, store, started, request.get("model", MODEL_NAME), request.get("weights", ""),
                          request.get("precision", ""))
        request["weights"] = workers.ensure()
        request["precision"] = workers.precision
        final = _run_job(images, settings, store, name, request, workers, server, broker_configured)
        path = output.path or f"imgq-{final.id}.{output.fmt}"
        records = with_min_score(store.iter_records(final.id), output.min_score)
        with open_output(path) as file:
            writer_for(output.fmt, final.params.get("top_k", settings.top_k))(records, file)
        _print_summary(store, final, None if output.temporary else path, output.min_score)
        echo(_broker(settings, server, broker_configured, final.id), err=True)
        if output.tag is not None:
            _tag(store, final, output.tag)
        return final


def _run_job(images: Iterator[str], settings: Settings, store: ResultStore, name: str, request: dict,
             workers: Workers, server: EmbeddedRedis | None, configured: bool) -> JobStatus:
    """Submit the job and wait until it is finished. Whatever ends the wait first cancels the job, and is raised."""
    job = submission.new_job_id()  # known before the walk ends: an interrupted submission can be cancelled
    try:
        submitted = submission.submit(images, settings=settings, store=store, name=name, job=job, **request)
        echo_queued(f"Job {job}: {plural(submitted.total, 'image')} in "
                    f"{plural(submitted.batches, 'batch', 'batches')}.", request.get("skipped"))
        return wait(store, job, check=workers.watch(job))
    except BaseException as exc:
        cancelled = _cancel(store, job, server, configured, exc)
        if cancelled and isinstance(exc, LocalServiceError):  # its one line says the job is not left queued
            raise LocalServiceError(f"{str(exc).rstrip('.')}. Cancelled job {job}.") from None
        raise


def walk_first(images: Iterable[str]) -> Iterator[str]:
    """``images`` with the first one already found: raises EmptySelection when there is none, before a
    server or a worker is started for nothing (issue 20.4). The rest is walked as the job is queued."""
    iterator = iter(images)
    first = next(iterator, None)
    if first is None:
        raise submission.EmptySelection("No images selected: check the paths, --include and --recursive.")
    return itertools.chain([first], iterator)


def _cancel(store: ResultStore, job: str, server: EmbeddedRedis | None, configured: bool,
            why: BaseException) -> bool:
    """The run ends before its job is done (``why``): cancel the job (its records so far stay) and say so, and
    where its records are; a job nobody watches any more must not wait for the next worker to come along."""
    said = _ended_by(why)
    try:
        final = store.cancel(job)
    except JobNotFound:
        with contextlib.suppress(redis.RedisError):
            store.discard_staged(job)  # a walk cut short: its batches never become a job
        if isinstance(why, (KeyboardInterrupt, Terminated)):
            _say(f"{said} before the job was queued: nothing was queued.")
        return False
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        _say(f"{said}; could not cancel job {job} ({exc}): run `imgq cancel {job}`.")
        return False
    if final.state != "cancelled":
        return False
    _say(f"{said}: cancelled job {job} ({final.processed} of {final.total} images have records: "
         f"`{_reach(server, configured)}results {job}`). Stopping what classify started.")
    return True


def _ended_by(why: BaseException) -> str:
    """How a line about the end of a run starts: Interrupted (Ctrl-C), the signal's name, or Giving up."""
    if isinstance(why, KeyboardInterrupt):
        return "Interrupted"
    return why.name if isinstance(why, Terminated) else "Giving up"


def _say(line: str) -> None:
    """A line on stderr, which may be gone (SIGHUP: the terminal closed): the job is cancelled all the same."""
    with contextlib.suppress(OSError):
        echo(line, err=True)


def _first_line(settings: Settings, server: EmbeddedRedis | None, configured: bool) -> str:
    """Which Redis (password masked) and which namespace the run uses, before it uses them (issue 25.5): with
    nothing configured, a Redis answering at the default address is anyone's."""
    where = f"namespace {settings.namespace}."
    if server is not None:
        owner = "started here" if server.owned else "another imgq runs"
        return f"Broker: an embedded Redis at {settings.broker_url} ({owner}, data in {server.data_dir}), {where}"
    found = "" if configured else " (none configured: the Redis answering there)"
    return f"Broker: {mask_url(settings.broker_url)}{found}, {where}"


def _broker(settings: Settings, server: EmbeddedRedis | None, configured: bool, job: str) -> str:
    """Which Redis the job went through, password masked (issue 20.7); for the embedded one, how to reach
    its data again once it is stopped (issue 20.6)."""
    if server is None:
        return f"Broker: {mask_url(settings.broker_url)}, namespace {settings.namespace}."
    imgq = _reach(server, configured)
    return (f"Broker: the embedded Redis, its data in {server.data_dir}. Open the job again with"
            f" `{imgq}results {job}`, `{imgq}report {job} -o report.html` or `{imgq}tag {job}`.")


def _reach(server: EmbeddedRedis | None, configured: bool) -> str:
    """The start of a command line that reaches the data of ``server`` (the embedded Redis) once it is
    stopped: plain `imgq` finds it by itself when no broker is configured and none answers by default."""
    configured = configured or bool(os.environ.get(env_var("results_url")))
    if server is None or (not configured and not default_redis_answers()):
        return "imgq "
    return "imgq --embedded-redis "


def _tag(store: ResultStore, final: JobStatus, options: TagOptions) -> None:
    summary = tag_records(store.iter_records(final.id), options, submitted_at=final.created)
    echo(f"Sidecars: {summary.count('created')} created, {summary.count('changed')} changed, "
         f"{summary.count('unchanged')} unchanged, {summary.count('skipped')} skipped, "
         f"{len(summary.failed)} failed.", err=True)
    for change in summary.changes:
        if change.message:
            echo(f"warning: {change.message}", err=True)
        if change.note:
            echo(f"note: {change.note}", err=True)


def _ensure_redis(settings: Settings, embedded: bool | None, configured: bool,
                  started: ExitStack) -> tuple[Settings, EmbeddedRedis | None]:
    if embedded is None:
        embedded = not configured and not default_redis_answers()
    if not embedded:
        return settings, None
    server = EmbeddedRedis(settings.state_dir)
    url = server.start()
    started.callback(server.stop)  # the first line says which it is (_first_line)
    return dataclasses.replace(settings, broker_url=url, results_url=""), server


def _print_summary(store: ResultStore, final: JobStatus, out: str | None, min_score: float | None = None) -> None:
    """The job's counts, top labels, groups and errors on standard error; ``out``: the results file, named
    when it stays (None: it does not). The top labels are counted as the results file holds them: each image's
    best label at or above ``min_score`` (--min-score), its head's when the job has one."""
    labels: Counter[str] = Counter()
    groups: Counter[str] = Counter()  # images by their WordNet groups, as `imgq report --group` selects them
    errors: Counter[str] = Counter()
    weights: set[str] = set()
    heads: set[str] = set()
    precisions: Counter[str] = Counter()  # the ok records' precisions: an INT8 worker's first images are fp32
    unlabelled = 0  # ok images with no label left at or above min_score
    for record in store.iter_records(final.id):
        weights.add(record.weights)
        if record.error is not None:
            errors[record.error.code] += 1
            continue
        precisions[record.precision] += 1
        if record.head is not None:
            heads.add(str(record.head.get("name", "")))
        best = _best_label(next(with_min_score([record], min_score)))
        if best:
            labels[best] += 1
        elif not (record.head or {}).get("error"):  # the head's own failures are not the threshold's
            unlabelled += 1
        groups.update(wordnet_groups.memberships(record.top_k, min_score))  # sums over the whole top-k
    rate = f", {final.rate:.1f} images/s" if final.rate else ""
    echo(f"{final.ok} classified, {final.failed} failed of {final.total} ({final.state}{rate}).", err=True)
    if out is not None:
        echo(f"Results: {out}", err=True)
    if labels or unlabelled:
        echo(_top_labels(labels, heads, unlabelled, min_score), err=True)
    if groups:
        echo("Groups: " + ", ".join(f"{group} ({n})" for group, n in groups.most_common(8)), err=True)
    if errors:
        echo("Errors: " + ", ".join(f"{code} ({n})" for code, n in errors.most_common()), err=True)
    if final.precision and (other := sum(n for p, n in precisions.items() if p != final.precision)):
        echo(f"NOTE: {plural(other, 'image')} classified in {', '.join(sorted(set(precisions) - {final.precision}))}, "
             f"not {final.precision}: {OTHER_PRECISION_WHY} (each record's precision says which).", err=True)
    if any(is_untrained(w) for w in weights):
        echo("WARNING: made with random weights: the labels are meaningless.", err=True)


def _best_label(record: ResultRecord) -> str:
    """The label the summary counts for an ok record (``--min-score`` already applied, as the results file has
    it): its head's best when the job has a head, else the model's; "" when none is left."""
    if record.head is not None:
        top = record.head.get("top_k") or []  # none: all under --min-score, or the head failed on this image
        return str(top[0]["label"]) if top else ""
    return record.top_k[0].label if record.top_k else ""


def _top_labels(labels: Counter[str], heads: set[str], unlabelled: int, min_score: float | None) -> str:
    """``Top labels (head beach): beach (12), city (3); 2 with no label at or above --min-score 0.9``."""
    whose = f" (head {', '.join(sorted(heads))})" if heads else ""
    line = f"Top labels{whose}: " + ", ".join(f"{label} ({n})" for label, n in labels.most_common(5))
    if unlabelled:
        under = f" at or above --min-score {min_score:g}" if min_score else ""
        line += f"{'; ' if labels else ''}{unlabelled} with no label{under}"
    return line
