"""What stops a worker as it starts, in one line on stderr and exit code 2, before it loads its model: a
mistake of its operator that waiting would not mend (issue 25, items 6 and 8).

Printed, not logged: Celery's logging is not set up yet when these run (``worker_init``), and would say each
twice.
"""

from __future__ import annotations

import os
import socket
import sys

from imgq.redis_protocol import check_speaks_redis
from imgq.results.store import ResultStore
from imgq.settings import MAX_CONCURRENCY, Settings, env_var
from imgq.storage.locate import destination_for
from worker import naming

EXIT_REFUSED = 2  # as for a malformed IMGQ_* value or weights that cannot load


def refuse_a_server_not_speaking_redis(settings: Settings) -> None:
    """When the broker's or the results store's URL leads to another kind of server (a web server on that
    port): Celery would retry it for good, each time logging its protocol error. A Redis that is away is
    waited for, as before (imgq/redis_protocol.py)."""
    problem = check_speaks_redis(settings)
    if problem is not None:
        _stop(problem)


def refuse_a_concurrency_out_of_bounds(concurrency) -> None:
    """When Celery's --concurrency (which overrides IMGQ_CONCURRENCY, itself bounded as it is read) asks for
    more batches in hand than MAX_CONCURRENCY (imgq/settings.py says why), or fewer than one."""
    if not isinstance(concurrency, int) or 1 <= concurrency <= MAX_CONCURRENCY:
        return
    if concurrency > MAX_CONCURRENCY:
        _stop(f"--concurrency {concurrency} is more than {MAX_CONCURRENCY}, the most batches one worker may hold "
              f"(imgq/settings.py, MAX_CONCURRENCY): start more workers instead")
    _stop(f"--concurrency {concurrency}: a worker holds from 1 to {MAX_CONCURRENCY} batches")


def refuse_a_live_namesake(settings: Settings, nodename: str | None) -> None:
    """When a live worker already has this node name (given with -n): the records of both would carry the
    same ``worker`` (worker/naming.py)."""
    if not nodename:
        return
    store = ResultStore.from_settings(settings)
    try:
        twin = naming.live_namesake(store, nodename, socket.gethostname(), os.getpid())
    finally:
        store.redis.close()
    if twin is not None:
        _stop(f"a live worker is already named {nodename} (pid {twin.pid} on {twin.host}): give this one another "
              f"name with -n, or leave -n out for a name of its own")


def refuse_a_destination_it_cannot_write(settings: Settings) -> None:
    """When the dump root or the sink folder (a local folder or an s3:// prefix) cannot be written: a small file
    written there and removed says so before the worker takes a batch (a read-only folder, a missing bucket,
    refused credentials, a store away after its client's retries), rather than a lost dump or sink file later."""
    for name, root in (("dump_root", settings.effective_dump_root), ("sink_dir", settings.effective_sink_dir)):
        try:
            destination_for(root).check_writable(root)
        except OSError as exc:
            _stop(f"{env_var(name)}: {exc}")


def _stop(problem: str) -> None:
    print(f"imgq worker: {problem}", file=sys.stderr, flush=True)
    os._exit(EXIT_REFUSED)
