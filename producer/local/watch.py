"""What `imgq classify` watches while its job runs: that some worker is there to take it, and that its
batches do not keep failing.

Only a worker with the job's model and the weights it asked for takes it (issue 25.1): live workers of other
weights are not used, and classify starts its own (issue 25.5). So with the precision it asked for (fp32, bf16,
int8): a worker started here that serves another (bf16 on a CPU without it, INT8 refused as it started) is said to,
and the job asks for what it serves; one that refuses INT8 later (calibrating on the first images) stops the run
with one line, the job's other images waiting for an INT8 pass that will not come. A live worker found at the start
may stop at any time (or be one that was stopping: its heartbeat was still there). When no such worker of the
namespace is alive for a heartbeat period, classify starts one itself and says so. A worker it started that exits
stops classify with the worker's reason. A batch whose deliveries ended without its records (its task failed: the
worker cannot import something, cannot read the model, ...) is reported with the failure the worker logged, each
time it fails again, instead of waiting without a word while the reconciler queues it again every
IMGQ_RECONCILE_SECONDS. Any other worker of the model that is up but not ready (its heartbeat says starting, or
failed) is reported once with what it says; the start-up steps of the worker classify started (``warming up ...``)
are shown as it says them.
"""

from __future__ import annotations

import time
from contextlib import ExitStack

from imgq.contract import FAILED, MODEL_NAME, weights_key_of
from imgq.jobs.deliveries import Deliveries
from imgq.results.store import ResultStore
from imgq.settings import Settings, mask_url
from producer.local.workers import WORKER_READY_TIMEOUT, LocalServiceError, LocalWorker
from producer.options.waiting import jobs_at
from producer.options.words import echo, plural

LOOK_SECONDS = 5.0  # how often the workers and the failed deliveries are looked at (a status poll is 0.5 s)
FAILURES_LOOKED_AT = 20  # batches checked for records at each look, the most delivered first


class Workers:
    """The workers `imgq classify` relies on: the live ones of the namespace with the job's model and weights,
    or the one it starts (stopped again through ``started``). ``weights``: the key of the weights the job asks
    for (imgq/models/weights.py), those of ``settings.weights``; None when this machine cannot name them (a
    missing file, say): the worker started here then says why in its own words, before anything is queued.
    ``precision``: the precision the job asks for (imgq.contract.PRECISIONS; "": any), which ``ensure`` may
    settle to what the worker started here serves (``precision`` after it)."""

    def __init__(self, settings: Settings, store: ResultStore, started: ExitStack, model: str = MODEL_NAME,
                 weights: str | None = "", precision: str = ""):
        self.settings, self.store, self.started, self.model = settings, store, started, model
        self.weights, self.precision = weights, precision
        self.worker: LocalWorker | None = None
        self._ready_by = 0.0
        self._none_since: float | None = None
        self._next_look = 0.0
        self._progress = -1
        self._failures: dict[int, int] = {}  # batch -> failed deliveries already reported
        self._unready: set[tuple] = set()  # what workers not ready have said, already reported

    def ensure(self) -> str:
        """Use the live workers of the namespace that serve the job's model with its weights, or start one.
        Returns the key of the weights the job asks for. Raises LocalServiceError when weights this machine
        could not name keep the worker started here from loading (its reason in the message)."""
        if self.weights is None:
            self.start("Started a worker")
            worker = self.worker
            assert worker is not None
            worker.wait_ready(self.store)  # raises with the worker's reason when it cannot load them
            self.weights = next(weights_key_of(w.weights) for w in self.store.workers() if w.pid == worker.started.pid)
            self._settle_precision()
            return self.weights
        if workers := self.store.serving(self.model, self.weights, self.precision):
            which = "the live worker" if len(workers) == 1 else f"the {len(workers)} live workers"
            echo(f"Using {which}, with weights {', '.join(sorted({w.weights for w in workers}))}: "
                       f"{', '.join(sorted(w.hostname for w in workers))}.", err=True)
            return self.weights
        if others := self.store.serving(self.model, self.weights):
            which = "The live worker" if len(others) == 1 else f"The {len(others)} live workers"
            serve = "serves" if len(others) == 1 else "serve"
            echo(f"{which} of model {self.model} {serve} {', '.join(sorted({jobs_at(w) for w in others}))}, not "
                 f"jobs at {self.precision}: starting one at {self.precision}.", err=True)
        elif others := self.store.serving(self.model):
            which = "The live worker" if len(others) == 1 else f"The {len(others)} live workers"
            has = "has" if len(others) == 1 else "have"
            echo(f"{which} of model {self.model} {has} weights {', '.join(sorted({w.weights for w in others}))}"
                       f", not {self.weights}: starting one with {self.weights}.", err=True)
        self._report_unready()
        self.start("Started a worker")
        if self.precision not in ("", "fp32"):  # bf16 and int8 may turn out fp32 there: known once it is ready
            worker = self.worker
            assert worker is not None
            worker.wait_ready(self.store)
            self._settle_precision()
        return self.weights

    def _settle_precision(self) -> None:
        """The job asks for what the worker started here serves jobs at, when that is not what was asked (bf16
        on a CPU without it, INT8 refused as it started): said in one line, which the records' precision
        repeats."""
        beat = self._own_beat()
        if beat is None or not self.precision or beat.job_precision == self.precision:
            return
        served = beat.job_precision or "any"
        echo(f"The worker started here serves jobs at {beat.job_precision or 'no precision'}, not {self.precision}"
             f"{f' ({beat.precision_note})' if beat.precision_note else ''}: the job asks for {served}.", err=True)
        self.precision = beat.job_precision

    def _own_beat(self):
        """The ready heartbeat of the worker started here, or None."""
        own = self.worker.started.pid if self.worker is not None else None
        return next((w for w in self.store.workers() if own is not None and w.pid == own), None)

    def start(self, what: str) -> None:
        worker = LocalWorker(self.settings)
        worker.start()
        self.started.callback(worker.stop)
        self.worker, self._ready_by = worker, time.monotonic() + WORKER_READY_TIMEOUT
        echo(f"{what} (pid {worker.started.pid}, model {self.model}, weights {self.settings.weights}, "
             f"broker {mask_url(self.settings.broker_url)}; log: {worker.log_path}).", err=True)

    def watch(self, job: str):
        """The ``check`` of producer.local.progress.wait for ``job``: raises LocalServiceError when the worker
        started here exits (or is not ready in time), starts one when no worker is left, reports failures."""

        def check() -> None:
            if self.worker is not None:
                for line in self.worker.check_alive():
                    if " ready in " not in line:  # its steps until then (the ready line is long, the bar says it)
                        echo(f"Worker: {line}", err=True)
            now = time.monotonic()
            if now < self._next_look:
                return
            self._next_look = now + LOOK_SECONDS
            self._look(job, now)

        return check

    def _look(self, job: str, now: float) -> None:
        live = self.store.serving(self.model, self.weights or "", self.precision)
        if self.worker is not None and not live and (own := self._own_beat()) is not None:
            note = f" ({own.precision_note})" if own.precision_note else ""
            raise LocalServiceError(f"The worker started here serves jobs at {own.job_precision or 'no precision'} "
                                    f"now, not {self.precision}{note}: the job's other images would wait for it. "
                                    f"Classify again with --precision {own.job_precision or 'fp32'}")
        if self.worker is not None and now > self._ready_by:
            if not any(w.pid == self.worker.started.pid for w in live):
                raise LocalServiceError(f"The worker was not ready after {WORKER_READY_TIMEOUT:.0f} s: "
                                        f"see {self.worker.log_path}")
            self._ready_by = float("inf")
        if live or self.worker is not None:
            self._none_since = None
        elif self._none_since is None:
            self._none_since = now
        elif now - self._none_since >= self.settings.heartbeat_seconds:
            weights = f" with weights {self.weights}" if self.store.serving(self.model) else ""
            self.start(f"No worker of model {self.model}{weights} is alive in namespace {self.settings.namespace!r} "
                       "any more: started one")
        self._report_unready()
        status = self.store.status(job)
        # Only a job that stands still is looked into; a sink job's records are files, not in Redis.
        if status.processed == self._progress and not status.params.get("sink"):
            self._report_failures(job)
        self._progress = status.processed

    def _report_unready(self) -> None:
        """Report, once each, what the workers of the model that are up but not ready say (not the one started
        here, whose log is read): the step a starting one is on, the reason a failed one cannot serve."""
        own = self.worker.started.pid if self.worker is not None else None
        for beat in self.store.heartbeats():
            said = (beat.hostname, beat.pid, beat.state, beat.detail)
            if beat.ready or beat.model != self.model or beat.pid == own or said in self._unready:
                continue
            self._unready.add(said)
            who = f"worker {beat.hostname} (pid {beat.pid} on {beat.host})"
            if beat.state == FAILED:
                echo(f"warning: {who} cannot serve: {beat.detail}", err=True)
            else:
                echo(f"note: {who} is {beat.state}, not ready yet: {beat.detail}", err=True)

    def _report_failures(self, job: str) -> None:
        for batch, failed in _failed_deliveries(self.store, job).items():
            if failed > self._failures.get(batch, 0):
                self._failures[batch] = failed
                reason = self.worker.last_task_error() if self.worker is not None else None
                where = f"log: {self.worker.log_path}" if self.worker is not None else "see the workers' logs"
                echo(f"warning: batch {batch} of job {job} failed {plural(failed, 'time')}"
                     f"{f': {reason}' if reason else ''} ({where}); the workers queue it again within "
                     f"{self.settings.reconcile_seconds} s.", err=True)


def _failed_deliveries(store: ResultStore, job: str) -> dict[int, int]:
    """Batch -> deliveries that ended while the batch still lacks records (failed), for the batches not in
    a worker's hands now. Looks at the most delivered ones only (FAILURES_LOOKED_AT)."""
    deliveries = Deliveries(store.redis, store.keys)
    fields = store.redis.hgetall(store.keys.attempts(job))
    ended = {int(name.removeprefix("ended:")): int(n) for name, n in fields.items() if name.startswith("ended:")}
    held = deliveries.inflight(job)
    candidates = sorted((b for b in ended if b not in held), key=lambda b: -ended[b])[:FAILURES_LOOKED_AT]
    failed = {}
    for batch in candidates:
        message = store.batch(job, batch)
        if message and store.missing(job, [image for image, _ in message["images"]]):
            failed[batch] = ended[batch]
    return failed
