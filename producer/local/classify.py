"""`imgq classify`: one machine, one command. Use what runs, start what is missing, stop what was started."""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import click
import redis

from imgq.contract import MODEL_NAME, is_untrained
from imgq.jobs import submit as submission
from imgq.labels import groups as wordnet_groups
from imgq.results.job import JobStatus
from imgq.results.store import JobNotFound, ResultStore
from imgq.settings import Settings, env_var, mask_url
from producer.exports.export import output as open_output
from producer.exports.export import with_min_score, writer_for
from producer.local.progress import wait
from producer.local.watch import Workers
from producer.local.workers import EmbeddedRedis, LocalServiceError, default_redis_answers
from producer.options.skipped import echo_queued
from producer.options.words import plural
from producer.tags.tagging import TagOptions, tag_records


@dataclass(frozen=True)
class Output:
    """Where a classified job goes: a results file (``path``, default ``imgq-<job>.<fmt>``) of ``fmt``,
    without the labels under ``min_score``; and XMP sidecars when ``tag`` says how."""

    path: str | None = None
    fmt: str = "jsonl"
    min_score: float | None = None
    tag: TagOptions | None = None


def run_classify(images: Iterable[str], settings: Settings, *, name: str, embedded: bool | None,
                 broker_configured: bool, request: dict | None = None, output: Output = Output()) -> JobStatus:
    """Submit, watch and export one job; returns its final status.

    ``embedded``: True starts a private Redis, False never does, None does so only when no broker is
    configured and nothing answers at the default address. ``request``: more keyword arguments of
    imgq.jobs.submit.submit (known, activations, ...). Raises EmptySelection before starting anything when no
    image is selected; UntrainedWeights when asked to tag the labels of random weights (after the results file
    is written); KeyboardInterrupt on Ctrl-C, once its job is cancelled and what it started is stopped.
    """
    images = walk_first(images)
    with ExitStack() as started:
        settings, server = _ensure_redis(settings, embedded, broker_configured, started)
        store = ResultStore.from_settings(settings)
        store.ping()
        workers = Workers(settings, store, started, (request or {}).get("model", MODEL_NAME))
        workers.ensure()
        job = submission.new_job_id()  # known before the walk ends: an interrupted submission can be cancelled
        try:
            submitted = submission.submit(images, settings=settings, store=store, name=name, job=job,
                                          **(request or {}))
            echo_queued(f"Job {job}: {plural(submitted.total, 'image')} in "
                        f"{plural(submitted.batches, 'batch', 'batches')}.", (request or {}).get("skipped"))
            final = wait(store, job, check=workers.watch(job))
        except KeyboardInterrupt:
            _cancel(store, job, server, broker_configured)
            raise
        except LocalServiceError as exc:  # the worker started here cannot serve: nobody would take the job
            raise _withdrawn(store, job, exc) from None
        path = output.path or f"imgq-{job}.{output.fmt}"
        records = with_min_score(store.iter_records(job), output.min_score)
        with open_output(path) as file:
            writer_for(output.fmt, final.params.get("top_k", settings.top_k))(records, file)
        _print_summary(store, final, path)
        click.echo(_broker(settings, server, broker_configured, job), err=True)
        if output.tag is not None:
            _tag(store, final, output.tag)
        return final


def walk_first(images: Iterable[str]) -> Iterator[str]:
    """``images`` with the first one already found: raises EmptySelection when there is none, before a
    server or a worker is started for nothing (issue 20.4). The rest is walked as the job is queued."""
    iterator = iter(images)
    first = next(iterator, None)
    if first is None:
        raise submission.EmptySelection("No images selected: check the paths, --include and --recursive.")
    return itertools.chain([first], iterator)


def _cancel(store: ResultStore, job: str, server: EmbeddedRedis | None, configured: bool) -> None:
    """Ctrl-C: cancel the job (its records so far stay) and say so, and where they are."""
    try:
        final = store.cancel(job)
    except JobNotFound:
        click.echo("Interrupted before the job was queued: nothing was queued.", err=True)
        return
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        click.echo(f"Interrupted; could not cancel job {job} ({exc}): run `imgq cancel {job}`.", err=True)
        return
    click.echo(f"Interrupted: cancelled job {job} ({final.processed} of {final.total} images have records: "
               f"`{_reach(server, configured)}results {job}`). Stopping what classify started.", err=True)


def _withdrawn(store: ResultStore, job: str, exc: LocalServiceError) -> LocalServiceError:
    """``exc`` saying also that the job was cancelled (its records so far stay), so that no job is left queued
    for a worker that will never take it; ``exc`` itself when it could not be."""
    try:
        store.cancel(job)
    except (JobNotFound, redis.RedisError):
        return exc
    return LocalServiceError(f"{str(exc).rstrip('.')}. Cancelled job {job}.")


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
    click.echo(f"Sidecars: {summary.count('created')} created, {summary.count('changed')} changed, "
               f"{summary.count('unchanged')} unchanged, {summary.count('skipped')} skipped, "
               f"{len(summary.failed)} failed.", err=True)
    for change in summary.changes:
        if change.message:
            click.echo(f"warning: {change.message}", err=True)
        if change.note:
            click.echo(f"note: {change.note}", err=True)


def _ensure_redis(settings: Settings, embedded: bool | None, configured: bool,
                  started: ExitStack) -> tuple[Settings, EmbeddedRedis | None]:
    if embedded is None:
        embedded = not configured and not default_redis_answers()
    if not embedded:
        return settings, None
    server = EmbeddedRedis(settings.state_dir)
    url = server.start()
    started.callback(server.stop)
    if server.owned:
        click.echo(f"Started an embedded Redis at {url} (data in {server.data_dir}).", err=True)
    else:
        click.echo(f"Using the embedded Redis another imgq runs at {url} (data in {server.data_dir}).", err=True)
    return dataclasses.replace(settings, broker_url=url, results_url=""), server


def _print_summary(store: ResultStore, final: JobStatus, out: str) -> None:
    labels: Counter[str] = Counter()
    groups: Counter[str] = Counter()  # images by the WordNet groups of their top label
    errors: Counter[str] = Counter()
    weights: set[str] = set()
    for record in store.iter_records(final.id):
        weights.add(record.weights)
        if record.error is not None:
            errors[record.error.code] += 1
        elif record.top_k:
            labels[record.top_k[0].label] += 1
            groups.update(wordnet_groups.path_of(record.top_k[0].wnid))
    rate = f", {final.rate:.1f} images/s" if final.rate else ""
    click.echo(f"{final.ok} classified, {final.failed} failed of {final.total} ({final.state}{rate}).", err=True)
    click.echo(f"Results: {out}", err=True)
    if labels:
        click.echo("Top labels: " + ", ".join(f"{label} ({n})" for label, n in labels.most_common(5)), err=True)
    if groups:
        click.echo("Groups: " + ", ".join(f"{group} ({n})" for group, n in groups.most_common(8)), err=True)
    if errors:
        click.echo("Errors: " + ", ".join(f"{code} ({n})" for code, n in errors.most_common()), err=True)
    if any(is_untrained(w) for w in weights):
        click.echo("WARNING: made with random weights: the labels are meaningless.", err=True)



