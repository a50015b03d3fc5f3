"""The queues a worker consumes, kept in step with the precision it serves jobs at.

A worker consumes the queues of the jobs it takes (imgq.celery_config.worker_queues): those that ask for nothing,
for its weights, for its precision, and for both. The precision is its runtime's ``job_precision``: fp32 or bf16 as
in effect, int8 for an INT8 runtime (also while it calibrates on its first images, which it classifies in fp32
and whose records say so), fp32 once INT8 was refused (docs/runtime.md, "INT8").

Before Celery's consumer starts (the model loads in the main process with the threads and solo pools), the
queues are chosen from the runtime at once (``choose``); after, a timer of the consumer's own event loop, the
thread that owns its connection, moves them when the runtime's precision changes (``follow``: an INT8 runtime
calibrating on its first images that refuses INT8 then serves jobs at fp32). A prefork
worker's children each hold a runtime of their own, which its main process does not see: it consumes the
queues of the precision its settings promise (``expected``), and none of int8's.
"""

from __future__ import annotations

import functools
import logging

from imgq.celery_config import worker_queues
from imgq.settings import Settings

log = logging.getLogger(__name__)

FOLLOW_SECONDS = 2.0  # how often a worker whose precision may still change looks at it again


def expected(settings: Settings) -> str:
    """The precision a worker with ``settings`` serves jobs at before its model is loaded: fp32; bf16 where
    the CPU computes it natively (else fp32: worker/runtimes/precision.py); for int8, none yet (it serves int8
    only once it is quantized and agrees, which only its load tells)."""
    return _expected(settings.precision)


@functools.lru_cache(maxsize=4)
def _expected(precision: str) -> str:
    """Once per process (the heartbeat asks at every beat); the loader says it when bf16 turns fp32."""
    from worker.runtimes.precision import cpu_supports_bf16

    if precision == "int8":
        return ""
    return "bf16" if precision == "bf16" and cpu_supports_bf16() else "fp32"


def choose(app, settings: Settings, model: str, weights: str, precision: str) -> None:
    """Make ``app``'s worker consume the queues of ``precision`` (and none of another), before its consumer
    starts."""
    queues = app.amqp.queues
    wanted = worker_queues(settings, model, weights, precision)
    unwanted = [name for name in queues.consume_from if name not in wanted]
    queues.deselect(unwanted)
    for name in wanted:
        if name not in queues.consume_from:
            queues.select_add(name, exchange=name, routing_key=name)


def follow(consumer, settings: Settings, model: str, weights: str, runtime, serving: str) -> None:
    """While ``runtime``'s ``job_precision`` may still change (``precision_may_change``), look at it every
    FOLLOW_SECONDS from ``consumer``'s event loop and move the queues consumed when it is no longer
    ``serving``; once it is settled, stop looking."""
    if not runtime.precision_may_change:
        return
    state = {"serving": serving, "entry": None}

    def look() -> None:
        settled = not runtime.precision_may_change  # read first: the precision read after it is the last one
        precision = runtime.job_precision
        if precision != state["serving"]:
            move(consumer, settings, model, weights, precision)
            state["serving"] = precision
        if settled and state["entry"] is not None:
            consumer.timer.cancel(state["entry"])

    state["entry"] = consumer.timer.call_repeatedly(FOLLOW_SECONDS, look)


def move(consumer, settings: Settings, model: str, weights: str, precision: str) -> None:
    """Consume the queues of ``precision`` and no other (the worker now serves jobs at it)."""
    wanted = worker_queues(settings, model, weights, precision)
    for name in list(consumer.app.amqp.queues.consume_from):
        if name not in wanted:
            consumer.cancel_task_queue(name)
    for name in wanted:
        consumer.add_task_queue(name, exchange=name, routing_key=name)
    log.warning("Serving jobs at %s from now on: consuming queues %s", precision or "no precision",
                ", ".join(wanted))
