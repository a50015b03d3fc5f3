"""Why a job waits: no live worker serves its model, or none has the weights it asked for. Said by `imgq status`
(JOB, the list, --workers), and warned of by `imgq wait` and `imgq submit --wait`."""

from __future__ import annotations

import click

from imgq.contract import MODEL_NAME, Heartbeat
from imgq.results.job import JobStatus
from imgq.results.store import ResultStore


def warn_if_no_worker(store: ResultStore, model: str, weights: str = "") -> None:
    """A warning on stderr when no live worker would take a job of ``model`` asking for ``weights``."""
    workers = store.workers()
    if not workers:
        click.echo(f"No worker is alive in namespace {store.keys.ns!r}: start one with `imgq worker`.", err=True)
    elif not any(w.model == model for w in workers):
        click.echo(f"No live worker serves model {model}: the job waits until one does "
                   f"(`imgq worker --model {model}`).", err=True)
    elif not store.serving(model, weights):
        click.echo(f"The job {weights_wait(workers, model, weights)}.", err=True)


def waiting_for(store: ResultStore, s: JobStatus) -> str:
    """Why an unfinished job makes no progress, when the reason is that no live worker serves its model, or
    none with the weights it asked for."""
    if s.finished or store.serving(s.model, s.weights):
        return ""
    if s.weights and (workers := store.serving(s.model)):
        return f"{weights_wait(workers, s.model, s.weights)} (start one: {worker_with(s.model, s.weights)})"
    return f"no live worker serves model {s.model} (start one: `imgq worker --model {s.model}`)"


def worker_with(model: str, weights: str) -> str:
    """The command that starts a worker of ``model`` with the weights of the key ``weights``."""
    command = "`imgq worker" + ("" if model == MODEL_NAME else f" --model {model}")
    if weights.startswith("file:"):  # file:<name>:sha256:<digest>: the file is the user's to find
        name = weights.removeprefix("file:").rpartition(":sha256:")[0]
        return f"{command} --weights FILE`, FILE being {name} of that digest"
    return f"{command} --weights {weights}`"


def weights_wait(workers: list[Heartbeat], model: str, weights: str) -> str:
    """"waits for a worker of MODEL with weights W; live workers of MODEL have X, Y" (of ``workers``)."""
    have = sorted({w.weights for w in workers if w.model == model})
    return (f"waits for a worker of model {model} with weights {weights}; live workers of {model} have "
            f"{', '.join(have)}")
