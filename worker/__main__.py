"""`python -m worker [celery worker options]`: what `imgq worker` runs."""

import sys

from worker.app import app


def main(argv: list[str]) -> int:
    """Celery's worker with ``argv``; returns its exit code. Not ``app.worker_main`` (nor ``app.start``), which
    drop it: a worker that could not start (a prefork pool whose children cannot load the model) exited 0,
    and a supervisor restarting only failed processes left it down."""
    from celery.bin.celery import celery

    celery.params[0].default = app  # as app.start does: the app `celery -A` would name
    try:
        return celery.main(args=["worker", *argv], standalone_mode=False) or 0
    finally:
        celery.params[0].default = None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
