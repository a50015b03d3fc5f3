"""The Celery app of `imgq beat`, and of the CLI writing the schedules' entries: built from the contract's
configuration alone.

Beat sends each tick by task name (``TASK_SCHEDULED_SCAN``): Celery's scheduler sends a task it has not
registered with ``send_task``, so beat imports no task module, no worker code and no TensorFlow, and runs
from an install without the worker extras.
"""

from __future__ import annotations

from imgq.celery_config import beat_config, celery_config
from imgq.settings import Settings


def beat_app(settings: Settings, *, patient: bool = False):
    """A Celery app configured like the workers' broker, with celery-redbeat as its scheduler.

    ``patient``: wait through a Redis restart (retrying forever) instead of failing, as `imgq beat` does;
    the CLI's own edits of entries fail at once instead, with one line.
    """
    from celery import Celery
    from redbeat.schedulers import ensure_conf

    app = Celery("imgq-beat", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.conf.update(beat_config(settings))
    if patient:
        app.conf.update(redbeat_redis_options={"retry_period": -1})
    ensure_conf(app)  # redbeat reads its key prefix from there
    return app


def run_beat(settings: Settings, celery_args: list[str]) -> None:
    """Run beat in this process until it is stopped (extra arguments go to `celery beat`)."""
    beat_app(settings, patient=True).start(["beat", "--scheduler", "redbeat.RedBeatScheduler", *celery_args])
