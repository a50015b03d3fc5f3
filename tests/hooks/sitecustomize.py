"""Test-only fault injection, loaded by a worker process whose PYTHONPATH starts with this folder.

Production code carries no test hooks: the tests start a worker with ``PYTHONPATH=tests/hooks`` and one of
the variables below, and Python imports this module at start-up (``sitecustomize``). It patches imgq's
decoder as soon as ``worker.images.preprocess`` is imported, before ``worker.batches.batch`` takes its names from it.

- ``TEST_HOOK_CRASH_ON=TEXT``: decoding a file whose real path contains TEXT kills the process (exit 70),
  as a crashing codec would. It fires where a codec would: after the allowed-roots check and the open.
  ``TEST_HOOK_CRASH_WHILE=hashing`` makes it fire when --skip-known hashes the file instead.
- ``TEST_HOOK_KILL_INFERENCE=1``: the first forward pass kills the inference thread (an exception no
  forward pass catches), as a bug in the serving loop would.
- ``TEST_HOOK_FAIL_BATCHES=1``: every batch task fails (raises) before it stores a record, as one whose
  worker imported the wrong module would.
- ``TEST_HOOK_FAIL_LOAD=1``: loading the model raises a RuntimeError (not a WeightsError), as running out of
  memory or a bug in a runtime would.
- ``TEST_HOOK_KILL_HEARTBEAT=1``: the heartbeat thread's first beat after Celery's consumer is ready raises (the
  worker was seen ready and said so), as a bug in making the beat would.
- ``TEST_HOOK_COUNT_OPENS=FILE``: every open of a location by a byte source (a local file, an s3:// object) that
  succeeds appends the location as a line to FILE: how many times the worker read each image, seen from outside.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

CRASH_ON = os.environ.get("TEST_HOOK_CRASH_ON", "")
CRASH_WHILE = os.environ.get("TEST_HOOK_CRASH_WHILE", "decoding")
KILL_INFERENCE = os.environ.get("TEST_HOOK_KILL_INFERENCE", "") == "1"
FAIL_BATCHES = os.environ.get("TEST_HOOK_FAIL_BATCHES", "") == "1"
FAIL_LOAD = os.environ.get("TEST_HOOK_FAIL_LOAD", "") == "1"
KILL_HEARTBEAT = os.environ.get("TEST_HOOK_KILL_HEARTBEAT", "") == "1"
COUNT_OPENS = os.environ.get("TEST_HOOK_COUNT_OPENS", "")


def _patch_preprocess(module) -> None:
    decode_pixels = module.decode_pixels

    def crashing_decode_pixels(file, **kwargs):
        if CRASH_ON in os.fsdecode(getattr(file, "name", "")):
            os._exit(70)
        return decode_pixels(file, **kwargs)

    module.decode_pixels = crashing_decode_pixels


def _patch_known_batch(module) -> None:
    stream_digest = module.stream_digest

    def crashing_stream_digest(file, limit):
        if CRASH_ON in os.fsdecode(getattr(file, "name", "")):
            os._exit(70)
        return stream_digest(file, limit)

    module.stream_digest = crashing_stream_digest


def _patch_gather(module) -> None:
    def dying_forward(self, requests):
        raise SystemExit("killed by tests/hooks")

    module.Gatherer._forward = dying_forward


def _patch_batch(module) -> None:
    def failing_classify(*args, **kwargs):
        raise RuntimeError("failing by tests/hooks")

    module._classify = failing_classify


def _patch_loading(module) -> None:
    def failing_load_classifier(*args, **kwargs):
        raise RuntimeError("failing by tests/hooks")

    module.load_classifier = failing_load_classifier


def _patch_process(module) -> None:
    import threading

    from celery.signals import worker_ready

    heartbeat = module.Runtime.heartbeat
    ready = threading.Event()
    # Celery's worker_ready, after the worker's ready line: the second beat, a period after the first, could come
    # before the main thread printed that line on a busy machine, and the worker then died without it.
    worker_ready.connect(lambda **_: ready.set(), weak=False)

    def dying_heartbeat(self, hostname):
        if ready.is_set():
            raise RuntimeError("killed by tests/hooks")
        return heartbeat(self, hostname)

    module.Runtime.heartbeat = dying_heartbeat


def _patch_byte_source(module) -> None:
    import contextlib

    source = module.LocalFiles if hasattr(module, "LocalFiles") else module.S3Objects
    open_location = source.open

    @contextlib.contextmanager
    def counted_open(self, location, *args, **kwargs):
        with open_location(self, location, *args, **kwargs) as file:
            line = (location.replace("\n", " ") + "\n").encode("utf-8", "surrogateescape")
            fd = os.open(COUNT_OPENS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)  # one write of one line with O_APPEND: threads never interleave
            finally:
                os.close(fd)
            yield file

    source.open = counted_open


_PATCHES = {"worker.images.preprocess": _patch_preprocess, "worker.batches.known_batch": _patch_known_batch,
            "worker.batches.gather": _patch_gather, "worker.batches.batch": _patch_batch,
            "worker.runtimes.loading": _patch_loading, "worker.process": _patch_process,
            "imgq.storage.local": _patch_byte_source, "imgq.storage.s3": _patch_byte_source}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Runs a patch right after its module's code has run, whoever imports it first."""

    def find_spec(self, name, path, target=None):
        if name not in _PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not _WANTED[name]:
            return None
        loader, patch = spec.loader, _PATCHES[name]
        original_exec = loader.exec_module

        def exec_module(module):
            original_exec(module)
            patch(module)

        loader.exec_module = exec_module
        return spec


_WANTED = {"worker.images.preprocess": bool(CRASH_ON) and CRASH_WHILE == "decoding",
           "worker.batches.known_batch": bool(CRASH_ON) and CRASH_WHILE == "hashing", "worker.batches.gather":
           KILL_INFERENCE,
           "worker.batches.batch": FAIL_BATCHES, "worker.runtimes.loading": FAIL_LOAD,
           "worker.process": KILL_HEARTBEAT, "imgq.storage.local": bool(COUNT_OPENS),
           "imgq.storage.s3": bool(COUNT_OPENS)}
if any(_WANTED.values()):
    sys.meta_path.insert(0, _PatchAfterImport())
