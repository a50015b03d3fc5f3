"""A worker's Celery node name, which its heartbeat and every record it writes (``worker``) carry.

Celery names every worker ``celery@<host>`` unless told otherwise: two workers on one machine then write the
same name into their records, and a record no longer says which worker made it (issue 25.8). So a worker not
named with ``-n``/``--hostname`` is named ``imgq-<model>-<pid>@<host>``: the model it serves (what an operator
looks for) and its process id (unique on the host while it runs). A worker named with ``-n`` keeps that name,
but is refused, before it loads its model, when a live worker already has it.
"""

from __future__ import annotations

import os

import redis

from imgq.contract import Heartbeat
from imgq.results.store import ResultStore

CELERY_DEFAULT_NAME = "celery"  # the name half Celery gives a node that was not named


def default_nodename(model: str, pid: int, host: str) -> str:
    """``imgq-<model>-<pid>@<host>``: unique among the workers of a host while they run."""
    return f"imgq-{model}-{pid}@{host}"


def chosen_nodename(celery_nodename: str, given: bool | None, model: str, pid: int) -> str:
    """The node name a worker runs under. ``celery_nodename``: Celery's (``name@host``, the default's name
    half ``celery``); ``given``: whether -n/--hostname was on the command line (None: not known, then a name
    half of ``celery`` counts as Celery's default)."""
    name, _, host = celery_nodename.partition("@")
    if given is None:
        given = name != CELERY_DEFAULT_NAME
    return celery_nodename if given else default_nodename(model, pid, host)


def hostname_given() -> bool | None:
    """Whether Celery's worker command was given -n/--hostname: read from its (click) command line, which is
    being run when the worker is built. None when the worker is not started by Celery's command."""
    import click
    from click.core import ParameterSource

    context = click.get_current_context(silent=True)
    while context is not None:
        if "hostname" in context.params and context.command.name == "worker":
            # Its option has a default (celery@<host>): where the value came from tells.
            return context.get_parameter_source("hostname") not in (ParameterSource.DEFAULT, None)
        context = context.parent
    return None


def live_namesake(store: ResultStore, nodename: str, host: str, pid: int) -> Heartbeat | None:
    """The heartbeat of a live worker already named ``nodename``, if any. Not one of this process, nor one
    on this host whose process is gone (a worker restarted under its name within the three beats its key
    outlives it). None too when Redis cannot be read now: the worker waits for it, as it does at start."""
    try:
        beats = store.workers()
    except redis.RedisError:
        return None
    for beat in beats:
        if beat.hostname != nodename:
            continue
        if beat.host == host and (beat.pid == pid or not _alive(beat.pid)):
            continue
        return beat
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True
