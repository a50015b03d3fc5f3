"""`python -m worker.health`: exit 0 when a worker on this host has a live heartbeat in Redis, else 1.

The Dockerfile's HEALTHCHECK. A worker writes its heartbeat only once its model is loaded and refreshes it
from a thread every IMGQ_HEARTBEAT_SECONDS, so a live key means: the model loaded, the process is alive,
and it reaches Redis. A worker whose inference thread died, or whose forward pass hangs past twice
IMGQ_FORWARD_PASS_TIMEOUT, removes its key and exits (worker/batches/gather.py, worker/process.py): it reads as
unhealthy here at once. Each container has a host name of its own, so "a worker on this host" is this
container's worker. Reads the same IMGQ_* settings as the worker; prints one line for `docker inspect`.
"""

from __future__ import annotations

import socket
import sys

import redis

from imgq.results.store import ResultStore
from imgq.settings import Settings, mask_url


def check(settings: Settings, host: str) -> tuple[bool, str]:
    """(healthy, a line saying why) for the workers of ``host`` in ``settings``' namespace."""
    store = ResultStore.from_settings(settings)
    try:
        mine = [w for w in store.workers() if w.host == host]
    except redis.RedisError as exc:
        return False, f"cannot read heartbeats from {mask_url(settings.effective_results_url)}: {exc}"
    finally:
        store.redis.close()
    if not mine:
        return False, f"no live worker on host {host} in namespace {settings.namespace!r}"
    names = ", ".join(w.hostname for w in mine)
    return True, f"alive: {names}"


def main() -> int:
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"unhealthy: {exc}")
        return 1
    healthy, reason = check(settings, socket.gethostname())
    print(("healthy: " if healthy else "unhealthy: ") + reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
