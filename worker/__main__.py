"""`python -m worker [celery worker options]`: what `imgq worker` runs."""

import sys

from worker.app import app


def main(argv: list[str]) -> int:
    """Celery's worker with ``argv``; returns its exit code. Not ``app.worker_main``, which drops it: a worker
    that could not start (a prefork pool whose children cannot load the model) exited 0, and a supervisor
    restarting only failed processes left it down."""
    return app.start(["worker", *argv]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
