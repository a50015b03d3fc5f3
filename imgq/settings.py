"""Every imgq setting, its default and its environment variable, in one place.

A setting named ``batch_size`` is read from ``IMGQ_BATCH_SIZE``; the CLI's options override the environment
and the worker reads the environment alone. Nothing here imports TensorFlow or Celery.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ENV_PREFIX = "IMGQ_"

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


def _default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "imgq")


@dataclass(frozen=True)
class Settings:
    broker_url: str = DEFAULT_BROKER_URL
    # Where the Celery messages go. Passwords and TLS go in the URL (redis://:pw@host/0, rediss://...).

    results_url: str = ""
    # Where job and result records live; empty means the broker's Redis.

    namespace: str = "imgq"
    # Prefix of every Redis key imgq writes and the name of its Celery queue, so that several deployments
    # (or test runs) can share one Redis without seeing each other.

    weights: str = "imagenet"
    # "imagenet" (Keras' download and cache), a local .h5/.weights.h5/.keras file, or "random" / "random:SEED".

    allowed_roots: tuple[str, ...] = ()
    # Folders a worker may read images from (os.pathsep-separated in the env var). Empty: no restriction.

    state_dir: str = field(default_factory=_default_state_dir)
    # Local state of `imgq classify`: the embedded Redis data and the logs of what it started; a worker's
    # cached OpenVINO conversions (<state_dir>/openvino).

    batch_size: int = 32
    # Images per task and per forward pass. 32 keeps a 2-core CPU busy without a long tail per task.

    top_k: int = 5
    # Labels kept per image.

    visibility_timeout: int = 3600
    # Seconds before Redis hands an unacknowledged batch to another worker. Must exceed the longest batch.

    max_pixels: int = 89_478_485
    # Images with more pixels are refused as `too_large` before decoding (Pillow's own bomb threshold).

    pool: str = "threads"
    # Celery pool of a worker: threads (default: one model, several batches in hand, see README "Choosing
    # the pool"), solo or prefork. Set it here, not with `--pool prefork`: Celery takes an explicit prefork
    # for its own default and keeps the configured pool.

    concurrency: int = 4
    # Batches a worker holds at once (threads pool). Their decoding overlaps the forward passes, and small
    # batches share forward passes. More only hoards messages that another worker could take.

    precision: str = "fp32"
    # fp32, or bf16: oneDNN's automatic bfloat16 mixed precision on CPUs with AVX512_BF16 or AMX (a CPU
    # without them runs fp32 and the worker says so).

    runtime: str = "openvino"
    # What runs the forward pass: openvino (the Keras model converted once, cached under
    # <state_dir>/openvino; measured 2x TensorFlow's speed in fp32 on a 2-core CPU, docs/runtime.md) or
    # tensorflow (the Keras model as it is; the one for CUDA GPUs).

    jpeg_draft: bool = True
    # Let libjpeg decode large JPEGs at 1/2, 1/4 or 1/8 scale (never below 224 px) before the resize.
    # A 12 MP photo then costs a fraction of a full decode; off gives Keras' pixels exactly.

    decode_threads: int = 2
    # Threads decoding images ahead of the model in a worker (Pillow releases the GIL while decoding).

    max_deliveries: int = 3
    # Deliveries of a batch before a worker decodes its images one at a time, to find an image that kills
    # the worker (recorded as `worker_crashed`) instead of losing the batch to it over and over.

    reconcile_seconds: int = 60
    # How often a worker looks for lost batches (their worker's heartbeat is gone, or the queue has drained
    # with images still lacking records and no record came for this long) and queues them again.

    heartbeat_seconds: int = 5
    # How often a worker says it is alive; it counts as gone after three missed beats.

    metrics_port: int = 0
    # Port on which a worker serves Prometheus metrics at /metrics (all interfaces); 0: no metrics server.
    # Off by default: an open port is the operator's choice, and two workers on one host need two ports.

    log_format: str = "text"
    # A worker's log lines: text (Celery's own format), or json (one JSON object per line, for log
    # collectors). Passwords in URLs are masked in either.

    scan_max_retries: int = 3
    # Default of `imgq schedule add --max-retries`: how many more ticks submit again a file whose record is an
    # error (a file still being copied reads as corrupt). Then it is left alone until it changes.

    beat_max_interval: int = 30
    # Longest sleep of `imgq beat` between two reads of the schedules in Redis: a schedule added, changed or
    # resumed while beat runs is seen within this many seconds.

    beat_lock_timeout: int = 150
    # Seconds before a waiting second `imgq beat` takes over from one that died without releasing its lock.
    # The holder renews the lock every loop, so this must exceed beat_max_interval.

    dump_root: str = ""
    # Folder of activation dumps, one sub-folder per job; empty means <state_dir>/dumps. Workers write
    # there and `imgq report`/`results --embeddings` read there: on several machines, a shared volume.

    max_dump_bytes: int = 10 * 1024**3
    # `imgq submit --activations` refuses a job whose dumps would take more than this, unless --yes.

    @property
    def effective_results_url(self) -> str:
        return self.results_url or self.broker_url

    @property
    def effective_dump_root(self) -> str:
        return self.dump_root or os.path.join(self.state_dir, "dumps")

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] | None = None, **overrides) -> Settings:
        """Settings from ``IMGQ_*`` variables, then ``overrides`` (None values are ignored).

        Raises ValueError naming the variable when a value does not parse.
        """
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(env_var(f.name))
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            env[env_var(f.name)] = os.pathsep.join(value) if isinstance(value, tuple) else str(value)
        return env


def env_var(name: str) -> str:
    """The environment variable of the setting ``name``."""
    return ENV_PREFIX + name.upper()


_INT_FIELDS = {"batch_size", "top_k", "visibility_timeout", "max_pixels", "decode_threads", "concurrency",
               "max_deliveries", "reconcile_seconds", "heartbeat_seconds", "max_dump_bytes", "metrics_port",
               "scan_max_retries", "beat_max_interval", "beat_lock_timeout"}
_INT_MAXIMA = {"batch_size": 1024, "top_k": 1000, "metrics_port": 65535}
_INT_MINIMA = {"metrics_port": 0,  # 0 turns the metrics server off
               "scan_max_retries": 0}  # 0: a file that errored is not retried
_BOOL_FIELDS = {"jpeg_draft"}
_NAMESPACE = re.compile(r"[A-Za-z0-9._-]{1,64}")  # it prefixes Redis keys and is matched in SCAN patterns
_CHOICES = {"pool": ("solo", "threads", "prefork"), "precision": ("fp32", "bf16"),
            "runtime": ("openvino", "tensorflow"), "log_format": ("text", "json")}


def _parse(name: str, raw: str):
    if name in _INT_FIELDS:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{env_var(name)} must be an integer. Received: {raw!r}") from None
        low = _INT_MINIMA.get(name, 1)
        if not low <= value <= _INT_MAXIMA.get(name, value):
            raise ValueError(f"{env_var(name)} must be from {low} to {_INT_MAXIMA.get(name, 'any')}. Received: {raw!r}")
        return value
    if name in _BOOL_FIELDS:
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError(f"{env_var(name)} must be 1 or 0 (true/false). Received: {raw!r}")
        return raw.lower() in ("1", "true", "yes", "on")
    if name in _CHOICES and raw not in _CHOICES[name]:
        raise ValueError(f"{env_var(name)} must be one of {', '.join(_CHOICES[name])}. Received: {raw!r}")
    if name == "namespace" and not _NAMESPACE.fullmatch(raw):
        raise ValueError(f"{env_var(name)} must be letters, digits, '.', '_' or '-'. Received: {raw!r}")
    if name == "allowed_roots":
        return tuple(str(Path(p).expanduser().resolve()) for p in raw.split(os.pathsep) if p)
    return raw


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for printing and logging."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    credentials, _, host = parts.netloc.rpartition("@")
    user = credentials.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
