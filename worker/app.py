"""The Celery app of the worker side: `celery -A worker.app worker` (or `imgq worker`).

Pool: threads by default (IMGQ_POOL, IMGQ_CONCURRENCY). One process per machine holds one model, and
TensorFlow spreads each forward pass over every core by itself; a second process would only compete for
the same cores with a second copy of the model. Several batches in hand, each decoding in its own thread
while worker.batches.gather runs the shared forward passes, keep the cores busy (docs/performance.md).

TensorFlow is not fork-safe, so this module never imports it. The model is loaded in the process that
runs tasks: the main process for the solo and threads pools (``worker_init``), each child for prefork
(``worker_process_init``, with Celery's 4 s start-up limit for children raised to fit the load).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading

from celery import Celery
from celery.signals import (
    celeryd_init,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from imgq.celery_config import celery_config, queue_name
from imgq.contract import WORKER_STOPS
from imgq.models.resolve import resolve
from imgq.models.spec import ModelError
from imgq.models.weights import check_weights, weights_key
from imgq.settings import Settings, env_var, mask_url
from imgq.text import printable
from worker import logs, naming, queues, start_checks

log = logging.getLogger(__name__)

try:
    settings = Settings.from_env()
    # The one model this worker serves, as its operator set it (IMGQ_MODEL): its name chooses the one queue
    # the worker consumes (imgq.celery_config.queue_name), so that it takes only its own model's jobs. A folder's
    # problems (labels.txt against the model's outputs among them) are found here, before Celery starts, each
    # as one line; so are weights that cannot go with the model: the producer's checks (imgq/models/).
    served = resolve(settings.model)
    # The weights it serves, named as jobs name them (imgq/models/weights.py): it consumes their queue too, where
    # the jobs that asked for them wait. Weights that cannot be named cannot be loaded either: said here.
    try:
        check_weights(served, settings.weights)
        served_weights = weights_key(settings.weights, served)
    except ValueError as exc:
        raise ValueError(f"{env_var('weights')}: {exc}") from None
except (ValueError, ModelError) as exc:  # a malformed IMGQ_* value: one line naming it, never a traceback
    # It may name a path; it ends as every line of a worker that stops does (classify reads it: WORKER_STOPS).
    print(f"imgq worker: {printable(exc)}{WORKER_STOPS}", file=sys.stderr, flush=True)
    sys.exit(2)
logs.install(settings.log_format)  # JSON lines if asked, URL passwords masked either way

app = Celery("imgq", include=["worker.tasks", "worker.scheduled"])
# The queues of the precision its settings promise; moved once the model is loaded (worker/queues.py).
app.conf.update(celery_config(settings, served.name, served_weights, queues.expected(settings)))
app.conf.update(
    worker_pool=settings.pool,
    worker_concurrency=settings.concurrency,
    # Prefork children load TensorFlow and the model before taking work: give them time.
    worker_proc_alive_timeout=120,
    worker_hijack_root_logger=False,
)


@celeryd_init.connect
def _name_this_worker(sender=None, instance=None, **_):
    """A worker not named with -n is ``imgq-<model>-<pid>@<host>``, not Celery's ``celery@<host>``, which two
    workers of one machine would share (worker/naming.py). Set here, as Celery's worker is built: its queues,
    banner, tasks' requests (the records' ``worker``) and heartbeat all take the name from there."""
    if instance is not None and sender:
        instance.hostname = naming.chosen_nodename(str(sender), naming.hostname_given(), served.name, os.getpid())


@worker_init.connect
def _load_in_main_process(sender=None, **_):
    # Each stops the worker in one line (exit 2) before it loads its model (worker/start_checks.py).
    start_checks.refuse_a_concurrency_out_of_bounds(getattr(sender, "concurrency", None))
    start_checks.refuse_a_server_not_speaking_redis(settings)
    start_checks.refuse_a_live_namesake(settings, getattr(sender, "hostname", None))
    start_checks.refuse_a_destination_it_cannot_write(settings)
    pool = getattr(sender, "pool_cls", "")
    celery_pool = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    if "prefork" not in celery_pool and (getattr(sender, "options", None) or {}).get("autoscale"):
        # Celery would start, then die at the first batch: its threads and solo pools cannot grow.
        print("imgq worker: --autoscale needs IMGQ_POOL=prefork (the threads and solo pools cannot grow); "
              "or scale out with more workers (docs/deployment.md, \"Scale out\")", file=sys.stderr, flush=True)
        os._exit(2)
    if "prefork" not in celery_pool:
        _load_or_exit(getattr(sender, "hostname", None), sender)
    elif settings.metrics_port:
        print("imgq worker: no metrics with the prefork pool (each child counts apart); use threads or solo",
              file=sys.stderr, flush=True)


@worker_process_init.connect
def _load_in_child_process(**_):
    _load_or_exit(None)


# A worker that stops takes its heartbeat with it, instead of leaving it to expire three beats later: a
# `imgq classify` run right after would trust it, start no worker and wait for good (issue 19.1).
# - At the first signal (SIGTERM, SIGINT: warm; SIGQUIT, a second SIGINT: cold) when no batch is in hand; with
#   batches in hand a warm shutdown finishes them first, and the heartbeat keeps saying it holds them, so
#   that no other worker takes them again meanwhile.
# - When the warm shutdown is done (worker_shutdown), in a prefork child as it exits, and at exit (a cold
#   shutdown sends no worker_shutdown).
@worker_shutting_down.connect
def _stop_beating_if_idle(how=None, **_):
    runtime = sys.modules.get("worker.process")  # not imported yet: no model, no heartbeat
    built = runtime.current() if runtime is not None else None
    if built is not None and (how == "Cold" or not built.in_hand):
        # This runs in a signal handler: Redis is called from a thread of its own, so that a lock the
        # interrupted main thread holds cannot block it, and only for a moment.
        helper = threading.Thread(target=runtime.stop_heartbeats, name="imgq-stop-heartbeat", daemon=True)
        helper.start()
        helper.join(2.0)


def _terminated_before_start(signum, frame):
    """SIGTERM while the model loads, or between the first ready beat and Celery's own handlers (installed as
    the worker starts, which replace this one): Python's default would end the process with its heartbeat
    (starting or ready) left behind."""
    from worker.process import stop_heartbeats

    stop_heartbeats()
    os._exit(128 + signum)


@worker_shutdown.connect
@worker_process_shutdown.connect
def _stop_beating(**_):
    runtime = sys.modules.get("worker.process")
    if runtime is not None:
        runtime.stop_heartbeats()


atexit.register(_stop_beating)


def _load_or_exit(hostname: str | None, worker=None) -> None:
    """Load the model, or stop this worker with one line saying why (worker/startup.py). ``worker``: Celery's
    worker, in the main process (the pool and concurrency it runs go into the heartbeat; the metrics server
    starts there).

    Celery logs and swallows exceptions of signal handlers: a worker left without its model would take
    batches only to fail them, and look alive all the while, so it exits instead, before it takes any,
    whatever the exception.
    """
    from worker.process import get_runtime
    from worker.startup import Startup

    starting = Startup(settings, served, hostname).start()  # beats "starting" while the model loads
    if worker is not None:
        signal.signal(signal.SIGTERM, _terminated_before_start)
    try:
        # Loaded here, in the process whose consumer chooses the queues: they follow its precision.
        runtime = get_runtime(settings, hostname, starting, follows_queues=worker is not None)
    except Exception as exc:  # noqa: BLE001 - any of them leaves the worker unable to serve
        starting.fail(_load_problems(exc))
    if worker is not None:
        runtime.celery_pool, runtime.concurrency = _pool_label(worker.pool_cls), worker.concurrency
        # Before the consumer starts: the queues of the precision this runtime serves jobs at (fp32's, not
        # int8's, when it refused INT8).
        queues.choose(app, settings, served.name, served_weights, runtime.job_precision)
        _serve_metrics_or_exit(runtime)
    # Celery has not set up its logging yet when this runs: say it on stderr, like the failure above.
    classifier = runtime.classifier
    print(f"imgq worker: {classifier.model_id} ready in {classifier.load_seconds:.1f} s, serving queues "
          f"{', '.join(_consumed())} (weights "
          f"{classifier.weights_id}, "
          f"{classifier.precision} on {classifier.runtime}{_chosen_by(classifier)}{_int8_note(classifier)}, "
          f"pool {runtime.celery_pool or settings.pool} "
          f"x{runtime.concurrency or settings.concurrency}, broker {mask_url(settings.broker_url)})",
          file=sys.stderr, flush=True)


@worker_ready.connect
def _follow_precision(sender=None, **_):
    """A runtime whose precision may still change (INT8 calibrating on its first images, which may refuse
    INT8) moves the queues consumed when it does (worker/queues.py); ``sender``: Celery's consumer."""
    runtime = sys.modules.get("worker.process")
    built = runtime.current() if runtime is not None else None
    if sender is not None and built is not None and built.follows_queues:
        queues.follow(sender, settings, served.name, served_weights, built.classifier, built.job_precision)


def _consumed() -> list[str]:
    """The names of the queues this worker consumes, as its ready line says them."""
    consumed = app.amqp.queues.consume_from
    return sorted(consumed) if consumed else [queue_name(settings, served.name, served_weights)]


def _int8_note(classifier) -> str:
    """What IMGQ_PRECISION=int8 gave (worker/runtimes/int8.py, int8_serving.py): its agreement, or why fp32."""
    note = getattr(classifier, "int8_note", "")
    return f"; {note}" if note else ""


def _load_problems(exc: Exception) -> list[str]:
    """Why the model did not load, one line a problem: a WeightsError's own lines (a model folder can have
    several), which say what to do; for anything else (a seed Keras refuses, memory, a bug), what was being
    loaded and the exception's kind and message."""
    from worker.runtimes.keras_model import WeightsError
    from worker.startup import described

    if isinstance(exc, WeightsError):  # a path or a label in them reaches a terminal: no control characters
        return [printable(line) for line in str(exc).splitlines()]
    return [f"cannot load model {served.name} with weights {settings.weights} on runtime {settings.runtime} "
            f"({described(exc)})"]


def _chosen_by(classifier) -> str:
    """Why IMGQ_RUNTIME=auto chose this runtime (worker/runtimes/auto.py), for the ready line."""
    reason = getattr(classifier, "chosen_by", "")
    return f" ({reason})" if reason else ""


def _pool_label(pool) -> str:
    """threads, solo, prefork, ...: Celery's pool as given (a name) or as loaded (a class)."""
    if isinstance(pool, str):
        return pool
    module = getattr(pool, "__module__", "").rpartition(".")[2]
    return {"thread": "threads"}.get(module, module)


def _serve_metrics_or_exit(runtime) -> None:
    """Start the metrics server if IMGQ_METRICS_PORT asks for one. A port that cannot be bound stops the
    worker, as missing weights do: the operator asked for metrics, and would scrape nothing."""
    if not settings.metrics_port:
        return
    from worker.metrics import serve

    try:
        serve(settings.metrics_port, runtime)
    except OSError as exc:
        from worker.process import stop_heartbeats
        from worker.startup import EXIT_CANNOT_SERVE, say, stop_lines

        stop_heartbeats()
        for line in stop_lines([f"cannot serve metrics on port {settings.metrics_port}: {exc}"]):
            say(line)
        os._exit(EXIT_CANNOT_SERVE)
    host = f"[{settings.metrics_address}]" if ":" in settings.metrics_address else settings.metrics_address
    print(f"imgq worker: metrics at http://{host}:{settings.metrics_port}/metrics", file=sys.stderr, flush=True)
