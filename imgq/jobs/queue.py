"""The Celery queue, seen from whoever sends to it: the producer, and a worker re-queueing lost batches.

Batches are sent by task name (``send_task``), so no sender imports the worker. Celery is imported on
first use: `imgq --help` must not pay for it.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice

from imgq.celery_config import celery_config, queue_name
from imgq.contract import MODEL_NAME, TASK_CLASSIFY_BATCH, BatchRef
from imgq.keys import Keys
from imgq.settings import Settings

PUBLISH_CHUNK = 500  # batch references counted in one round trip, then sent: what a publish holds at once


def publish(batches: Iterable[BatchRef], settings: Settings) -> int:
    """Send batches to the queues of their models' workers (``queue_name``; of the workers with the weights a job
    asked for, and serving the precision it asked for, when it did), over one connection. Returns how many were
    sent.

    Each job's count of published messages goes up before they are sent, PUBLISH_CHUNK at a time
    (imgq/jobs/deliveries.py): a job with as many deliveries begun as messages published has none waiting in the
    queue, which the reconciler's stall rule needs to know per job, without reading the queue.
    """
    batches = iter(batches)
    app = sender_app(settings)
    sent = 0
    with app.producer_or_acquire() as producer:
        while chunk := list(islice(batches, PUBLISH_CHUNK)):  # a job's million batches are never held at once
            count_published(chunk, settings)
            for ref in chunk:
                app.send_task(TASK_CLASSIFY_BATCH, args=[ref.to_dict()],
                              queue=queue_name(settings, ref.model, ref.weights, ref.precision), producer=producer)
                sent += 1
    return sent


def refs(messages: Iterable[dict]) -> Iterator[BatchRef]:
    """The references of stored batch messages (to queue them again, to the queue of their model, weights and
    precision)."""
    return (BatchRef(m["job"], m["batch"], m.get("model", MODEL_NAME), m.get("weights", ""), m.get("precision", ""))
            for m in messages)


def count_published(batches: list[BatchRef], settings: Settings) -> None:
    from imgq.jobs.deliveries import add_published

    client = _results_redis(settings.effective_results_url)
    add_published(client, Keys(settings.namespace), Counter(ref.job for ref in batches))


@functools.lru_cache(maxsize=8)
def _results_redis(url: str):
    import redis

    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5)


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
