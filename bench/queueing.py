"""The producer alone: queueing a tree of 100,000 paths with no worker, and the start-up of `imgq --help`."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

from imgq.jobs.submit import submit
from imgq.results.store import ResultStore, delete_namespace
from imgq.settings import Settings
from imgq.storage.selection import PathFilter
from imgq.storage.walk import iter_images

TREE_FOLDERS, TREE_FILES = 100, 1000  # 100,000 paths in all


def make_tree(root: str, folders: int = TREE_FOLDERS, files: int = TREE_FILES) -> int:
    """``folders`` x ``files`` files of a few bytes named .jpg: the producer only walks and queues paths,
    it never opens them, so their content does not matter."""
    for f in range(folders):
        folder = Path(root, f"d{f:03d}")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(files):
            (folder / f"img{i:04d}.jpg").write_bytes(b"jpg")
    return folders * files


def time_submit(root: str, settings: Settings) -> dict:
    """Seconds for ``submit(iter_images(...))`` of the whole tree in this process, its keys deleted after."""
    settings = dataclasses.replace(settings, namespace=settings.namespace + "-producer")
    store = ResultStore.from_settings(settings)
    try:
        started = time.perf_counter()
        submitted = submit(iter_images([root], PathFilter()), settings=settings, store=store, name="bench-producer")
        seconds = time.perf_counter() - started
    finally:
        delete_namespace(settings.broker_url, settings.namespace)
    return {"paths": submitted.total, "batches": submitted.batches, "seconds": seconds}


def imgq_command() -> list[str]:
    """The installed `imgq` script beside this Python, or the module when it is not installed."""
    script = Path(sys.executable).parent / "imgq"
    return [str(script)] if script.exists() else [sys.executable, "-m", "producer.cli"]


def time_cli_submit(root: str, settings: Settings) -> dict:
    """Wall seconds of `imgq submit ROOT` in a fresh process: imports, walk, staging and publishing."""
    namespace = settings.namespace + "-cli"
    command = [*imgq_command(), "--broker-url", settings.broker_url, "--namespace", namespace, "submit", root]
    try:
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=_clean_env())
        seconds = time.perf_counter() - started
    finally:
        delete_namespace(settings.broker_url, namespace)
    return {"seconds": seconds}


def time_help(runs: int = 5) -> dict:
    """Best wall seconds of `imgq --help` over ``runs`` (the best: the others measured the page cache)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([*imgq_command(), "--help"], check=True, capture_output=True, env=_clean_env())
        times.append(time.perf_counter() - started)
    return {"seconds": min(times), "runs": [round(t, 3) for t in times]}


def _clean_env() -> dict[str, str]:
    """This environment without IMGQ_* variables: the command line alone decides."""
    return {k: v for k, v in os.environ.items() if not k.startswith("IMGQ_")}
