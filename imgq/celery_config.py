"""The Celery configuration the producer, the workers and `imgq beat` must agree on, from the settings.

Apart from the contract (imgq/contract.py) because it reads the settings, which the contract must not: the
settings validate model names against the models, and the models use the contract's names.
"""

from __future__ import annotations

import ssl

from imgq.contract import MODEL_NAME, TASK_CLASSIFY_BATCH, model_queue
from imgq.keys import Keys
from imgq.settings import Settings


def queue_name(settings: Settings, model: str = MODEL_NAME, weights: str = "", precision: str = "") -> str:
    """The Celery queue of ``model``'s workers: ``<ns>`` for resnet50 (the queue every job used before jobs
    named their model, so that workers and producers of either age keep meeting), ``<ns>.<model>`` for any
    other; with ``weights`` (a weights key, imgq/models/weights.py), the queue of the workers of that model
    with those weights; with ``precision`` (one of imgq.contract.PRECISIONS), of those serving jobs at that
    precision (imgq.contract.model_queue). A job's batches go to the queue of what it asked for
    (worker_queues lists those a worker consumes)."""
    return model_queue(settings.namespace, model, weights, precision)


def worker_queues(settings: Settings, model: str, weights: str, precision: str = "") -> tuple[str, ...]:
    """The queues of a worker of ``model`` with the weights ``weights`` (a key) serving jobs at ``precision``
    ("": none yet): those of the jobs that asked for nothing, for its weights, for its precision, and for both.
    A job's batches wait in exactly one of them (queue_name of what it asked for)."""
    pairs = [(w, p) for p in ("", precision) for w in ("", weights)]
    return tuple(dict.fromkeys(queue_name(settings, model, w, p) for w, p in pairs))


def celery_config(settings: Settings, model: str = MODEL_NAME, weights: str = "", precision: str = "") -> dict:
    """The Celery configuration shared by the producer and the workers; ``model``: the name of the model a
    worker serves, whose queue is its default one; ``weights``: the key of the weights it serves, and
    ``precision``: the one it serves jobs at ("": none yet), whose queues it consumes too (worker_queues)."""
    config = _base_config(settings, model)
    if weights or precision:
        # Declared as a sender's send_task declares a queue it names (exchange and routing key: the name).
        config["task_queues"] = {name: {"exchange": name, "routing_key": name}
                                 for name in worker_queues(settings, model, weights, precision)}
    if settings.broker_url.startswith("rediss://") and "ssl_cert_reqs" not in settings.broker_url:
        # Kombu connects to rediss:// WITHOUT checking the server's certificate unless told to.
        config["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return config


def beat_config(settings: Settings) -> dict:
    """The Celery configuration of `imgq beat` (on top of celery_config), and of the CLI writing its entries."""
    return {
        # Schedules are data in Redis (celery-redbeat), not a file or code: edited while beat runs, and its
        # lock lets one beat of several fire.
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "redbeat_redis_url": settings.broker_url,
        "redbeat_key_prefix": Keys(settings.namespace).redbeat_prefix,
        # Given explicitly: redbeat would otherwise fall back to the broker's transport options (and warn).
        "redbeat_redis_options": {},
        "redbeat_lock_timeout": settings.beat_lock_timeout,
        # How long beat may sleep before reading the schedules again: bounds how late a new one is seen.
        "beat_max_loop_interval": settings.beat_max_interval,
        # No result backend, so nothing to clean: keeps Celery from adding its daily backend_cleanup entry.
        "result_expires": None,
    }


def _base_config(settings: Settings, model: str) -> dict:
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # Unacknowledged batches return to the queue after this long (a worker died holding them).
            "visibility_timeout": settings.visibility_timeout,
            # Kombu's own keys (queues, unacked) live under our namespace too.
            "global_keyprefix": Keys(settings.namespace).kombu_prefix,
        },
        # JSON only: a pickled message could run code in the worker.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # The results store is the product; Celery's own result backend is not used.
        "task_ignore_result": True,
        "result_backend": None,
        # A worker consumes its default queue only: its model's. Senders name the queue of each message
        # (imgq/jobs/queue.py, the schedules' entries), so the routes below never decide where a batch goes.
        "task_default_queue": queue_name(settings, model),
        "task_routes": {TASK_CLASSIFY_BATCH: {"queue": queue_name(settings, model)}},
        # Acknowledge after the batch is stored, so a worker that dies mid-batch loses nothing.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A worker reserves no more batches than it has threads (IMGQ_CONCURRENCY): the rest stay in
        # Redis for other workers.
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": False,
    }
