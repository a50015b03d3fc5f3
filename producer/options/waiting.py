"""Why a job waits: no live worker serves its model, or none has the weights it asked for, or none serves jobs at
the precision it asked for. Said by `imgq status` (JOB, the list, --workers), and warned of by `imgq wait` and
`imgq submit --wait`."""

from __future__ import annotations

import click

from imgq.contract import MODEL_NAME, Heartbeat, serves_weights
from imgq.results.job import JobStatus
from imgq.results.store import ResultStore


def warn_if_no_worker(store: ResultStore, model: str, weights: str = "", precision: str = "") -> None:
    """A warning on stderr when no live worker would take a job of ``model`` asking for ``weights`` and
    ``precision``."""
    workers = store.workers()
    if not workers:
        click.echo(f"No worker is alive in namespace {store.keys.ns!r}: start one with `imgq worker`.", err=True)
    elif not any(w.model == model for w in workers):
        click.echo(f"No live worker serves model {model}: the job waits until one does "
                   f"(`imgq worker --model {model}`).", err=True)
    elif not store.serving(model, weights):
        click.echo(f"The job {weights_wait(workers, model, weights)}.", err=True)
    elif not store.serving(model, weights, precision):
        click.echo(f"The job {precision_wait(workers, model, weights, precision)}.", err=True)


def waiting_for(store: ResultStore, s: JobStatus) -> str:
    """Why an unfinished job makes no progress, when the reason is that no live worker serves its model, or
    none with the weights it asked for, or none at the precision it asked for."""
    if s.finished or store.serving(s.model, s.weights, s.precision):
        return ""
    if s.weights and (workers := store.serving(s.model)) and not store.serving(s.model, s.weights):
        return f"{weights_wait(workers, s.model, s.weights)} (start one: {worker_with(s.model, s.weights)})"
    if s.precision and (workers := store.serving(s.model, s.weights)):
        return (f"{precision_wait(workers, s.model, s.weights, s.precision)} (start one: "
                f"{worker_with(s.model, s.weights, s.precision)})")
    return f"no live worker serves model {s.model} (start one: `imgq worker --model {s.model}`)"


def worker_with(model: str, weights: str, precision: str = "") -> str:
    """The command that starts a worker of ``model`` with the weights of the key ``weights`` ("": any) at
    ``precision`` ("": any)."""
    command = "`imgq worker" + ("" if model == MODEL_NAME else f" --model {model}")
    command += f" --precision {precision}" if precision else ""
    if weights.startswith("file:"):  # file:<name>:sha256:<digest>: the file is the user's to find
        name = weights.removeprefix("file:").rpartition(":sha256:")[0]
        return f"{command} --weights FILE`, FILE being {name} of that digest"
    return f"{command}{f' --weights {weights}' if weights else ''}`"


def weights_wait(workers: list[Heartbeat], model: str, weights: str) -> str:
    """"waits for a worker of MODEL with weights W; live workers of MODEL have X, Y" (of ``workers``)."""
    have = sorted({w.weights for w in workers if w.model == model})
    return (f"waits for a worker of model {model} with weights {weights}; live workers of {model} have "
            f"{', '.join(have)}")


def precision_wait(workers: list[Heartbeat], model: str, weights: str, precision: str) -> str:
    """"waits: no live worker serves model MODEL at int8; W serves fp32 (why)" (of ``workers``: those of
    ``model`` with ``weights`` say what they serve jobs at, and an INT8 worker's note why it serves fp32)."""
    have = sorted({f"{w.hostname} serves {jobs_at(w)}" for w in workers if w.model == model
                   and serves_weights(w.weights, weights)})
    with_weights = f" with weights {weights}" if weights else ""
    return f"waits: no live worker serves model {model}{with_weights} at {precision}; {'; '.join(have)}"


def jobs_at(w: Heartbeat) -> str:
    """What a worker serves jobs at, as the reason a job waits says it: its precision, and its INT8 note."""
    serving = f"jobs at {w.job_precision}" if w.job_precision else "only jobs that ask for no precision"
    return f"{serving} ({w.precision_note})" if w.precision_note else serving
