"""`imgq classify`: one machine, one command. Use what runs, start what is missing, stop what was started."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass

import click

from imgq import submit as submission
from imgq.contract import MODEL_NAME, is_untrained
from imgq.jobs import JobStatus
from imgq.settings import DEFAULT_BROKER_URL, Settings, mask_url
from imgq.store import ResultStore
from producer.export import output as open_output
from producer.export import with_min_score, writer_for
from producer.local import EmbeddedRedis, LocalWorker, redis_answers
from producer.progress import wait
from producer.tagging import TagOptions, tag_records


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
    imgq.submit.submit (known, activations, ...). Raises UntrainedWeights when asked to tag the labels of random
    weights (after the results file is written).
    """
    with ExitStack() as started:
        settings = _ensure_redis(settings, embedded, broker_configured, started)
        store = ResultStore.from_settings(settings)
        store.ping()
        worker = _ensure_worker(settings, store, started, (request or {}).get("model", MODEL_NAME))
        submitted = submission.submit(images, settings=settings, store=store, name=name, **(request or {}))
        click.echo(f"Job {submitted.job}: {submitted.total} images in {submitted.batches} batches.", err=True)
        if worker is not None:
            worker.wait_ready(store)
        final = wait(store, submitted.job, check=worker.check_alive if worker else None)
        path = output.path or f"imgq-{submitted.job}.{output.fmt}"
        records = with_min_score(store.iter_records(submitted.job), output.min_score)
        with open_output(path) as file:
            writer_for(output.fmt, final.params.get("top_k", settings.top_k))(records, file)
        _print_summary(store, final, path)
        if output.tag is not None:
            _tag(store, final, output.tag)
        return final


def _tag(store: ResultStore, final: JobStatus, options: TagOptions) -> None:
    summary = tag_records(store.iter_records(final.id), options)
    click.echo(f"Sidecars: {summary.count('created')} created, {summary.count('changed')} changed, "
               f"{summary.count('unchanged')} unchanged, {len(summary.failed)} failed.", err=True)
    for change in summary.failed:
        click.echo(f"warning: {change.message}", err=True)


def _ensure_redis(settings: Settings, embedded: bool | None, configured: bool, started: ExitStack) -> Settings:
    if embedded is None:
        embedded = not configured and not redis_answers(DEFAULT_BROKER_URL)
    if not embedded:
        return settings
    server = EmbeddedRedis(settings.state_dir)
    url = server.start()
    started.callback(server.stop)
    click.echo(f"Started an embedded Redis at {url} (data in {settings.state_dir}).", err=True)
    return dataclasses.replace(settings, broker_url=url, results_url="")


def _ensure_worker(settings: Settings, store: ResultStore, started: ExitStack, model: str) -> LocalWorker | None:
    """A worker of ``model`` (by name) started here (IMGQ_MODEL: the name or folder given), unless one is alive."""
    if workers := store.serving(model):
        others = {w.weights for w in workers} - {settings.weights}
        if not all(w.startswith(settings.weights) for w in others):
            click.echo(f"Using the {len(workers)} live workers, with weights {', '.join(sorted(others))}: "
                       f"--weights applies only to a worker started here.", err=True)
        return None
    worker = LocalWorker(settings)
    worker.start()
    started.callback(worker.stop)
    click.echo(f"Started a worker (pid {worker.started.pid}, model {model}, weights {settings.weights}, "
               f"broker {mask_url(settings.broker_url)}; log: {worker.log_path}).", err=True)
    return worker


def _print_summary(store: ResultStore, final: JobStatus, out: str) -> None:
    labels: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    weights: set[str] = set()
    for record in store.iter_records(final.id):
        weights.add(record.weights)
        if record.error is not None:
            errors[record.error.code] += 1
        elif record.top_k:
            labels[record.top_k[0].label] += 1
    rate = f", {final.rate:.1f} images/s" if final.rate else ""
    click.echo(f"{final.ok} classified, {final.failed} failed of {final.total} ({final.state}{rate}).", err=True)
    click.echo(f"Results: {out}", err=True)
    if labels:
        click.echo("Top labels: " + ", ".join(f"{label} ({n})" for label, n in labels.most_common(5)), err=True)
    if errors:
        click.echo("Errors: " + ", ".join(f"{code} ({n})" for code, n in errors.most_common()), err=True)
    if any(is_untrained(w) for w in weights):
        click.echo("WARNING: made with random weights: the labels are meaningless.", err=True)
