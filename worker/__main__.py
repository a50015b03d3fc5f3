"""`python -m worker [celery worker options]`: what `imgq worker` runs."""

import sys

from worker.app import app


def main(argv: list[str]) -> None:
    app.worker_main(["worker", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
