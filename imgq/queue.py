"""The Celery queue, seen from whoever sends to it: the producer, and a worker re-queueing lost batches.

Batches are sent by task name (``send_task``), so no sender imports the worker. Celery is imported on
first use: `imgq --help` must not pay for it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

from imgq.contract import TASK_CLASSIFY_BATCH, BatchRef, celery_config, queue_name
from imgq.settings import Settings


def publish(batches: Iterable[BatchRef], settings: Settings) -> int:
    """Send batches to the workers' queue, over one connection. Returns how many were sent."""
    app = sender_app(settings)
    sent = 0
    with app.producer_or_acquire() as producer:
        for ref in batches:
            app.send_task(TASK_CLASSIFY_BATCH, args=[ref.to_dict()], queue=queue_name(settings), producer=producer)
            sent += 1
    return sent


def refs(messages: Iterable[dict]) -> Iterator[BatchRef]:
    """The references of stored batch messages (to queue them again)."""
    return (BatchRef(m["job"], m["batch"]) for m in messages)


@functools.lru_cache(maxsize=8)
def sender_app(settings: Settings):
    """A Celery app configured like the workers', used only to send; one per settings, so that its
    connection pool serves every job a process submits (200 one-image jobs: 6.5 ms each without)."""
    from celery import Celery

    app = Celery("imgq-sender", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def check_broker(settings: Settings) -> None:
    """Raises a kombu/redis connection error when the broker cannot be reached, within a few seconds."""
    with sender_app(settings).connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=5)
