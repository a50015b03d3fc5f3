"""How much CPU other processes took while a figure was measured.

On a 2-core machine a test suite or a build running beside the benchmark halves its figures; this makes that
visible instead of leaving a low number unexplained. "Ours" is this process and every live descendant
(the worker, the embedded Redis), plus children already waited for.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Share:
    """Filled in when the ``watch`` block ends: fractions of the whole machine (all cores) over the block."""

    others: float | None = None
    steal: float | None = None  # the hypervisor running other machines on our cores


def _system_ticks() -> tuple[int, int]:
    """(busy ticks of all cores, steal ticks) from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


def _process_stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, user + system ticks of the process and its waited-for children)."""
    stats = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()  # the command name may hold spaces
        except OSError:  # exited meanwhile
            continue
        stats[int(name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]))
    return stats


def _our_ticks() -> int:
    stats = _process_stats()
    ours, frontier = set(), {os.getpid()}
    while frontier:
        ours |= frontier
        frontier = {pid for pid, (ppid, _) in stats.items() if ppid in frontier and pid not in ours}
    return sum(stats[pid][1] for pid in ours if pid in stats)


@contextlib.contextmanager
def watch() -> Iterator[Share]:
    """Measure the CPU other processes use during the block; on Linux only (elsewhere the share stays None)."""
    share = Share()
    if not os.path.exists("/proc/stat"):
        yield share
        return
    (busy, steal), ours, started = _system_ticks(), _our_ticks(), time.perf_counter()
    yield share
    (busy_end, steal_end), ours_end = _system_ticks(), _our_ticks()
    capacity = (time.perf_counter() - started) * _TICK * (os.cpu_count() or 1)
    share.others = max(0, (busy_end - busy) - (ours_end - ours)) / capacity
    share.steal = (steal_end - steal) / capacity


def sample(seconds: float = 3.0) -> Share:
    """Other processes' share of the machine over ``seconds`` of idling: is it quiet enough to measure?"""
    with watch() as share:
        time.sleep(seconds)
    return share


def wait_quiet(limit: float, timeout: float, log) -> float | None:
    """Idle until other processes take at most ``limit`` of the machine (sampled over 2 s), for at most
    ``timeout`` seconds; returns the last share seen. A shared machine's neighbours come and go: a figure
    measured while a test suite runs beside it says little about imgq."""
    deadline = time.monotonic() + timeout
    while True:
        others = sample(2.0).others
        if others is None or others <= limit or time.monotonic() > deadline:
            return others
        log(f"other processes use {others:.0%} of the CPU: waiting for them before measuring")
