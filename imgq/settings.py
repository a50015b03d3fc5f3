"""Every imgq setting, its default and its environment variable, in one place.

A setting named ``batch_size`` is read from ``IMGQ_BATCH_SIZE``; the CLI's options override the environment
and the worker reads the environment alone. Nothing here imports TensorFlow or Celery.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from imgq.contract import NAME
from imgq.storage.roots import parse_roots

ENV_PREFIX = "IMGQ_"

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


def _default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "imgq")


@dataclass(frozen=True)
class Settings:
    broker_url: str = DEFAULT_BROKER_URL
    # Where the Celery messages go. Passwords and TLS go in the URL (redis://:pw@host/0, rediss://...); a
    # password with any of # / ? @ : % in it is percent-encoded (# is %23), else the URL is refused.

    results_url: str = ""
    # Where job and result records live; empty means the broker's Redis.

    broker_url_file: str = ""
    # A file holding the broker URL (its one line), read instead of IMGQ_BROKER_URL, which must then be unset:
    # a Compose or Kubernetes secret, so that the password is in no environment (docs/deployment-secrets.md).

    results_url_file: str = ""
    # A file holding the results URL, read instead of IMGQ_RESULTS_URL (as IMGQ_BROKER_URL_FILE).

    namespace: str = "imgq"
    # Prefix of every Redis key imgq writes and the name of its Celery queue, so that several deployments
    # (or test runs) can share one Redis without seeing each other.

    model: str = "resnet50"
    # The model a worker serves (`imgq worker --model`): a built-in name (resnet50, resnet50v2,
    # efficientnetv2b0, efficientnetv2s, convnexttiny, mobilenetv3large) or the folder of your own model
    # (model.keras, labels.txt, optional imgq-model.toml; docs/models.md). Checked when the worker starts.

    weights: str = "imagenet"
    # "imagenet" (Keras' download and cache), a local .h5/.weights.h5/.keras file, or "random" / "random:SEED"
    # (SEED from 0 to 4294967295; random weights are for built-in models). For a folder model, "imagenet" means
    # the weights in its model file; a .weights.h5 file replaces them.
    # A worker takes the jobs that ask for no weights and those that ask for its own; `imgq classify` asks for
    # these, and starts a worker with them unless a live one has them.

    job_weights: str = ""
    # The weights the jobs of `imgq submit` and `imgq schedule add` ask for (`--weights`), named as
    # IMGQ_WEIGHTS names them; only a worker with them takes such a job, which waits until one is alive. Empty:
    # any weights of the job's model, whatever its workers run.

    job_precision: str = "any"
    # The precision the jobs of `imgq submit` and `imgq schedule add` ask their forward passes to run in
    # (`--precision`): fp32, bf16 or int8 goes only to a worker serving jobs at it (an INT8 worker still
    # calibrating on its first images serves none yet: docs/runtime.md, "INT8"), and waits until one is alive;
    # any: whatever its worker runs, as every job before jobs named their precision.

    allowed_roots: tuple[str, ...] = ()
    # Folders and object-storage prefixes (s3://bucket/prefix) a worker may read images from, os.pathsep-separated
    # in the env var (/photos:s3://team-photos/2024). Empty: no restriction. A worker given only folders reads
    # no bucket (docs/object-storage.md).

    s3_endpoint_url: str = ""
    # The endpoint of an S3-compatible store (MinIO, SeaweedFS, Ceph, R2, B2): http(s)://host[:port], read by
    # the producer (listing) and the workers (reading). Empty: Amazon S3 itself. Credentials never go here: boto3
    # reads them from its standard chain (AWS_ACCESS_KEY_ID..., ~/.aws, an instance role; docs/object-storage.md).

    s3_region: str = ""
    # The region requests to s3:// locations are signed for (us-east-1, eu-west-3; auto for R2). Empty: boto3's
    # own (AWS_REGION, ~/.aws/config), else us-east-1.

    state_dir: str = field(default_factory=_default_state_dir)
    # Local state of `imgq classify`: the embedded Redis data and the logs of what it started; a worker's
    # cached OpenVINO conversions (<state_dir>/openvino); the approximate indexes `imgq similar` and `imgq
    # duplicates` build for embeddings under an s3:// dump root (<state_dir>/indexes; docs/duplicates.md).

    batch_size: int = 32
    # Images per task and per forward pass. 32 keeps a 2-core CPU busy without a long tail per task.

    top_k: int = 5
    # Labels kept per image.

    visibility_timeout: int = 3600
    # Seconds before Redis hands an unacknowledged batch to another worker. Must exceed the longest batch.

    max_pixels: int = 89_478_485
    # Images with more pixels are refused as `too_large` before decoding (Pillow's own bomb threshold).

    max_file_bytes: int = 256 * 1024**2
    # Files bigger than this are refused as `too_large` before any decoder runs, and not hashed for
    # --skip-known: a multi-gigabyte file costs a stat, not minutes. 256 MiB holds an uncompressed 8-bit RGB
    # image of max_pixels; raise both for bigger uncompressed scans.

    pool: str = "threads"
    # Celery pool of a worker: threads (default: one model, several batches in hand; docs/performance.md),
    # solo or prefork. Set it here, not with `--pool prefork`: Celery takes an explicit prefork for its own
    # default and keeps the configured pool.

    concurrency: int = 4
    # Batches a worker holds at once (threads pool). Their decoding overlaps the forward passes, and small
    # batches share forward passes. More only hoards messages that another worker could take. From 1 to
    # MAX_CONCURRENCY (64, below), as is a worker's --concurrency.

    precision: str = "fp32"
    # fp32; bf16: oneDNN's automatic bfloat16 mixed precision on CPUs with AVX512_BF16 or AMX (a CPU
    # without them runs fp32 and the worker says so); int8: the model quantized by NNCF on your own photos
    # (calibration), on OpenVINO, used only when its labels agree with fp32's (docs/runtime.md, "INT8").

    calibration: str = ""
    # int8: a folder of your own photos to quantize on (a few hundred; read under the worker's file rules). Empty:
    # the worker calibrates on the first images it is sent, classifying them in fp32 meanwhile, then switches.

    calibration_images: int = 300
    # int8: how many photos calibrate (a quarter of them are held out to measure the agreement with fp32).

    int8_min_agreement: float = 0.99
    # int8: the least share of held-out photos whose top-1 label INT8 must give as fp32 does; below it the
    # worker stays on fp32 and says why, once.

    runtime: str = "auto"
    # What runs the forward pass: auto (the default) is the faster of the two below for this model on this
    # CPU, measured when a worker first loads the model there and recorded with its OpenVINO conversion, and
    # measured again at a later quiet start if the machine was busy or the call close (docs/runtime.md);
    # openvino (the Keras model converted once, cached under <state_dir>/openvino); tensorflow (the Keras model
    # as it is; the one for CUDA GPUs).

    auto_quiet_load: float = 0.5
    # The 1-minute load average per core at or under which runtime auto's measurement counts as quiet. Other
    # work takes the cores one runtime waits for and can swing the choice: one measured above it is provisional,
    # and a later start measures again when the load is at or under it (docs/runtime.md). From 0 (only an idle
    # machine is quiet) to 64; a worker's own start-up adds about 0.2 a core on a quiet 2-core machine.

    jpeg_draft: bool = True
    # Let libjpeg decode large JPEGs at 1/2, 1/4 or 1/8 scale (never below the model's input size) before the
    # resize, and classify a HEIC from its embedded thumbnail when that is at least the input size (an iPhone's
    # 320x240 for 224x224) and agrees with a tile of the picture itself. A 12 MP photo then costs a fraction of a
    # full decode; off gives Keras' pixels exactly.

    decode_threads: int = 2
    # Threads decoding images ahead of the model in a worker (Pillow releases the GIL while decoding).

    max_deliveries: int = 3
    # Lost deliveries of a batch (their worker died holding it) before a worker decodes its images one at a
    # time, to find an image that kills the worker (recorded as `worker_crashed`) instead of losing the batch
    # to it over and over. Deliveries that finished (`imgq requeue`, say) do not count.

    reconcile_seconds: int = 60
    # How often a worker looks for lost batches (their worker's heartbeat is gone, or the queue has drained
    # with images still lacking records and no record came for this long) and queues them again.

    heartbeat_seconds: int = 5
    # How often a worker says it is alive, from 1 to 300 seconds; it counts as gone after three missed beats.

    forward_pass_timeout: int = 600
    # Seconds a task waits for its forward pass (queued behind others included) before its images get
    # `internal` records; a worker whose pass runs twice as long, or whose inference thread died, stops
    # its heartbeat and exits, so that its health check fails and its batches go to another worker.

    metrics_port: int = 0
    # Port on which a worker serves Prometheus metrics at /metrics (on metrics_address); 0: no metrics
    # server. Off by default: an open port is the operator's choice, and two workers on one host need two.

    metrics_address: str = "127.0.0.1"
    # The IP address the metrics server binds: loopback by default, so that only this machine can scrape;
    # 0.0.0.0 (or ::) for every interface, as a container needs (docker-compose.yml sets it there).

    log_format: str = "text"
    # A worker's log lines: text (Celery's own format), or json (one JSON object per line, for log
    # collectors). Passwords in URLs are masked in either.

    scan_max_retries: int = 3
    # Default of `imgq schedule add --max-retries`: how many more ticks submit again a file whose record is an
    # error (a file still being copied reads as corrupt). Then it is left alone until it changes.

    schedule_min_every: int = 60
    # The shortest `imgq schedule add --every`, in seconds or as 30s, 5m (from 1s to 1d): a minute, as cron's
    # finest. Each tick walks every folder of its schedule and stats every file, is a task in the model's queue
    # among the batches, and is one of the 100 runs a schedule keeps: ticks every second flood the queue, are
    # dropped behind a backlog, and leave a run history of two minutes. Lower it for a small drop folder that
    # must be seen within seconds; `imgq schedule run NAME` scans one now.

    beat_max_interval: int = 30
    # Longest sleep of `imgq beat` between two reads of the schedules in Redis: a schedule added, changed or
    # resumed while beat runs is seen within this many seconds.

    beat_lock_timeout: int = 150
    # Seconds before a waiting second `imgq beat` takes over from one that died without releasing its lock.
    # The holder renews the lock every loop, so this must exceed beat_max_interval.

    dump_root: str = ""
    # Folder of activation dumps and embedding files, one sub-folder per job; empty means <state_dir>/dumps.
    # Workers write there and `imgq report`/`results --embeddings`/`duplicates` read there: on several machines,
    # a shared volume, or an s3://bucket/prefix (each file one object, the same layout of keys; endpoint and
    # credentials as for reading, docs/object-storage.md). A worker checks that it can write there as it starts.

    max_dump_bytes: int = 10 * 1024**3
    # `imgq submit --activations` refuses a job whose dumps would take more than this, unless --yes.

    sink_dir: str = ""
    # Folder of the Parquet sinks of jobs submitted with `--sink`, one sub-folder per job (one file per batch);
    # empty means <state_dir>/sink. Workers write there and `imgq results` reads there: on several machines,
    # a shared volume or an s3://bucket/prefix, as for dumps.

    retention: int = 7 * 86400
    # How long a finished (done or cancelled) job's records stay in Redis before they expire, in seconds or
    # as 12h, 7d, 30d (at most 3650d); 0 keeps them until `imgq delete`. A week: enough to export a job,
    # short enough that a Redis labelling millions of images a month does not keep them all. `imgq status`
    # says when a job expires, and `imgq results` warns when it is close.

    def __post_init__(self):
        for name in ("broker_url", "results_url"):
            check_redis_url(name, getattr(self, name))
        if self.precision == "int8" and self.runtime == "tensorflow":
            raise ValueError(f"{env_var('precision')}=int8 runs on OpenVINO: set {env_var('runtime')} to openvino "
                             "or auto (auto runs int8 on OpenVINO).")

    @property
    def effective_results_url(self) -> str:
        return self.results_url or self.broker_url

    @property
    def effective_sink_dir(self) -> str:
        return self.sink_dir or os.path.join(self.state_dir, "sink")

    @property
    def effective_dump_root(self) -> str:
        return self.dump_root or os.path.join(self.state_dir, "dumps")

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] | None = None, **overrides) -> Settings:
        """Settings from ``IMGQ_*`` variables, then ``overrides`` (None values are ignored). The URL files
        (IMGQ_BROKER_URL_FILE, IMGQ_RESULTS_URL_FILE) are read here, into broker_url and results_url.

        Raises ValueError naming the variable when a value does not parse.
        """
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(env_var(f.name))
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        for name in URL_FILE_SETTINGS:  # IMGQ_BROKER_URL_FILE: the URL from a file, e.g. a Compose secret
            if name in overrides:  # --broker-url wins over both variables
                values.pop(f"{name}_file", None)
            elif values.get(f"{name}_file"):
                if name in values:
                    raise ValueError(f"Set {env_var(name)} or {url_file_var(name)}, not both.")
                path = values[f"{name}_file"]
                values[name] = read_url_file(name, path)
                # Checked here, while it is known where the URL came from: the user set the file's variable.
                check_redis_url(name, values[name], where=url_file_where(name, path))
        values.update(overrides)
        return cls(**values)

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            env[env_var(f.name)] = os.pathsep.join(value) if isinstance(value, tuple) else str(value)
        for name in URL_FILE_SETTINGS:  # a URL read from a file travels as the file's name, not in the clear
            path = getattr(self, f"{name}_file")
            try:
                from_file = bool(path) and read_url_file(name, path) == getattr(self, name)
            except ValueError:
                from_file = False
            env[env_var(name) if from_file else url_file_var(name)] = ""
        return env


URL_FILE_SETTINGS = ("broker_url", "results_url")
# Settings whose value may come from a file named by the setting <name>_file (IMGQ_<NAME>_FILE) instead of
# IMGQ_<NAME>: a URL holds the Redis password, and a variable's value shows in `docker inspect` and
# /proc/PID/environ, a file's does not (docs/deployment-secrets.md). Both set is an error, as for the official
# images' *_FILE variables.
MAX_URL_FILE_BYTES = 64 * 1024  # a URL is a line; a bigger file is the wrong file


def url_file_var(name: str) -> str:
    """``IMGQ_BROKER_URL_FILE``: the variable naming a file that holds the setting ``name``."""
    return env_var(f"{name}_file")


def url_file_where(name: str, path: str) -> str:
    """``IMGQ_BROKER_URL_FILE (/run/secrets/broker_url)``: how messages name a URL read from a file."""
    return f"{url_file_var(name)} ({path})"


def read_url_file(name: str, path: str) -> str:
    """The URL held by the file at ``path`` (for the setting ``name``): its one line, surrounding whitespace
    and the final newline stripped.

    A regular file of at most MAX_URL_FILE_BYTES, opened without blocking (a FIFO named by mistake is
    refused, not waited on). Symbolic links are followed: the operator names this file, and Kubernetes
    mounts its secrets as links. Raises ValueError naming the variable, never quoting the file's content.
    """
    where = url_file_where(name, path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ValueError(f"{where}: cannot open: {exc.strerror}.") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{where} is not a regular file.")
        if info.st_size > MAX_URL_FILE_BYTES:
            raise ValueError(f"{where} is larger than {MAX_URL_FILE_BYTES} bytes: not a URL file.")
        data = os.read(fd, MAX_URL_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{where}: cannot read: {exc.strerror}.") from None
    finally:
        os.close(fd)
    try:
        url = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not UTF-8 text.") from None
    if not url:
        raise ValueError(f"{where} is empty: it must hold the URL.")
    if "\n" in url or "\r" in url:
        raise ValueError(f"{where} holds more than one line: it must hold the URL alone.")
    return url


UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_RETENTION = 3650 * 86400
# Ten years: longer is "until deleted" (0) in practice, and Redis refuses an EXPIRE whose milliseconds overflow.
_DURATION = re.compile(r"([0-9]+)([smhd]?)")


def parse_duration(text: str) -> int:
    """Seconds of ``3600``, ``90s``, ``15m``, ``12h`` or ``7d``; raises ValueError. Callers bound the result
    (a number of thousands of digits reads as 10**20 seconds, not as Python's int() refusing it)."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"Expected seconds or a duration like 90s, 15m, 12h or 7d. Received: {text!r}")
    number = int(match[1]) if len(match[1].lstrip("0")) <= 20 else 10**20
    return number * UNIT_SECONDS[match[2] or "s"]


def format_seconds(seconds: int) -> str:
    """``900`` -> ``15m``: the largest unit that divides it."""
    for unit in ("d", "h", "m"):
        if seconds and seconds % UNIT_SECONDS[unit] == 0:
            return f"{seconds // UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


def env_var(name: str) -> str:
    """The environment variable of the setting ``name``."""
    return ENV_PREFIX + name.upper()


_INT_FIELDS = {"batch_size", "top_k", "visibility_timeout", "max_pixels", "decode_threads", "concurrency",
               "max_file_bytes", "max_deliveries", "reconcile_seconds", "heartbeat_seconds", "forward_pass_timeout",
               "max_dump_bytes", "metrics_port", "scan_max_retries", "beat_max_interval", "beat_lock_timeout",
               "calibration_images"}
MAX_CONCURRENCY = 64
# Batches one worker holds at once. imgq sets Celery's prefetch multiplier to 1, so a worker reserves exactly as
# many messages as it has threads (Celery's worker_prefetch_multiplier: "how many messages to prefetch at a
# time multiplied by the number of concurrent processes"; for the threads pool, its threads), all of them
# unacknowledged until stored, and all waiting on the one model of the process, a forward pass at a time:
# - beyond a few, threads add no speed (TensorFlow and OpenVINO spread each pass over every core already:
#   docs/performance.md) and only hold batches another worker could take, each with its decoded pixels
#   (about 19 MB for 32 images at 224x224);
# - a batch waiting in line longer than IMGQ_FORWARD_PASS_TIMEOUT is failed, and one not acknowledged within
#   IMGQ_VISIBILITY_TIMEOUT is delivered again: 64 batches of 32 at a slow CPU's 20 images/s already wait
#   100 s for the last one.
# Celery reads 0 as "one per CPU": imgq asks for the number itself.
_INT_MAXIMA = {"batch_size": 1024, "top_k": 1000, "metrics_port": 65535, "concurrency": MAX_CONCURRENCY,
               "calibration_images": 10_000, "heartbeat_seconds": 300}
# heartbeat_seconds: a worker is seen as gone after three missed beats, which must stay minutes, not days
# (a huge period overflowed the heartbeat thread's wait: it died, and its key outlived the worker for years).
_INT_MINIMA = {"calibration_images": 8,  # fewer cannot calibrate and hold out (worker/runtimes/calibration.py)
               "metrics_port": 0,  # 0 turns the metrics server off
               "scan_max_retries": 0}  # 0: a file that errored is not retried
_FLOAT_RANGES = {"auto_quiet_load": (0.0, 64.0), "int8_min_agreement": (0.0, 1.0)}
# 64 a core is a machine swamped beyond doing anything useful: more would only mean "always quiet".
_BOOL_FIELDS = {"jpeg_draft"}
_CHOICES = {"pool": ("solo", "threads", "prefork"), "precision": ("fp32", "bf16", "int8"),
            "job_precision": ("any", "fp32", "bf16", "int8"),
            "runtime": ("openvino", "tensorflow", "auto"), "log_format": ("text", "json")}


def _model_setting(raw: str) -> str:
    """A built-in model's name, or what looks like a folder (the worker reads the folder when it starts)."""
    from imgq.models.spec import BUILTIN, unknown_name_message

    if raw in BUILTIN or os.sep in raw or raw.startswith(".") or os.path.isdir(raw):
        return raw
    raise ValueError(f"{env_var('model')}: {unknown_name_message(raw)}")


_DURATION_RANGES = {"schedule_min_every": (1, 86400)}


def _duration_setting(name: str, raw: str) -> int:
    """Seconds of a duration (``60``, ``30s``, ``5m``) within its range (_DURATION_RANGES). Raises ValueError."""
    low, high = _DURATION_RANGES[name]
    try:
        seconds = parse_duration(raw)
    except ValueError as exc:
        raise ValueError(f"{env_var(name)}: {exc}") from None
    if not low <= seconds <= high:
        raise ValueError(f"{env_var(name)} must be from {format_seconds(low)} to {format_seconds(high)}. "
                         f"Received: {raw!r}")
    return seconds


def _float_setting(name: str, raw: str) -> float:
    """A number within its range (_FLOAT_RANGES): not nan, not infinite. Raises ValueError."""
    low, high = _FLOAT_RANGES[name]
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{env_var(name)} must be a number. Received: {raw!r}") from None
    if not low <= value <= high:  # nan compares false: refused too
        raise ValueError(f"{env_var(name)} must be from {low:g} to {high:g}. Received: {raw!r}")
    return value


def parse_setting(name: str, raw: str):
    """The value of the setting ``name`` from its text, read as its variable is. Raises ValueError."""
    return _parse(name, raw)


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
    if name in _FLOAT_RANGES:
        return _float_setting(name, raw)
    if name in _DURATION_RANGES:
        return _duration_setting(name, raw)
    if name == "retention":
        try:
            seconds = parse_duration(raw)
        except ValueError as exc:
            raise ValueError(f"{env_var(name)}: {exc}") from None
        if seconds > MAX_RETENTION:
            raise ValueError(f"{env_var(name)} must be at most {format_seconds(MAX_RETENTION)} (0: until `imgq "
                             f"delete`). Received: {raw!r}")
        return seconds
    if name in _BOOL_FIELDS:
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError(f"{env_var(name)} must be 1 or 0 (true/false). Received: {raw!r}")
        return raw.lower() in ("1", "true", "yes", "on")
    if name in _CHOICES and raw not in _CHOICES[name]:
        raise ValueError(f"{env_var(name)} must be one of {', '.join(_CHOICES[name])}. Received: {raw!r}")
    if name == "model":
        return _model_setting(raw)
    if name == "weights":  # its form here; whether it fits the model where that is known (check_weights)
        from imgq.models.weights import parse_weights

        try:
            parse_weights(raw)
        except ValueError as exc:
            raise ValueError(f"{env_var(name)}: {exc}") from None
    if name == "namespace" and not NAME.fullmatch(raw):
        raise ValueError(f"{env_var(name)} must be letters, digits, '.', '_' or '-'. Received: {raw!r}")
    if name == "metrics_address":
        try:
            return str(ipaddress.ip_address(raw))
        except ValueError:
            raise ValueError(f"{env_var(name)} must be an IP address (127.0.0.1, 0.0.0.0, ::). "
                             f"Received: {raw!r}") from None
    if name == "allowed_roots":
        return parse_roots(raw, env_var(name))
    if name == "s3_endpoint_url":
        return _endpoint_url(raw)
    if name in ("dump_root", "sink_dir") and raw.startswith("s3://"):
        return _destination_url(name, raw)
    if name == "s3_region" and not _REGION.fullmatch(raw):
        raise ValueError(f"{env_var(name)} must be a region name: lowercase letters, digits and '-' "
                         f"(us-east-1, auto). Received: {raw!r}")
    return raw


_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's bucket names: 3 to 63 of these


def _destination_url(name: str, raw: str) -> str:
    """An s3://bucket[/prefix] IMGQ_DUMP_ROOT or IMGQ_SINK_DIR, without a final '/' (files' keys are joined under
    it as paths are). Raises ValueError for a bucket S3 would refuse, or a '.', '..' or empty segment in the
    prefix: keys are literal, and a key with those is not where its path would be."""
    bucket, _, prefix = raw[len("s3://"):].rstrip("/").partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"{env_var(name)} must be s3://bucket/prefix with a bucket of 3 to 63 lowercase letters, "
                         f"digits, '.' or '-'. Received: {raw!r}")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ValueError(f"{env_var(name)} must not have an empty, '.' or '..' segment in its prefix. "
                         f"Received: {raw!r}")
    return raw.rstrip("/")


def _endpoint_url(raw: str) -> str:
    """IMGQ_S3_ENDPOINT_URL checked: http(s)://host[:port][/path], no credentials in it (they belong to the
    standard chain, where no log line or `ps` shows them), no query. Returned without a final '/'."""
    where = env_var("s3_endpoint_url")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where} must be an http:// or https:// URL with a host. Received: {raw!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{where} must not hold credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                         "a profile or a credentials file (docs/object-storage.md).")
    if parts.query or parts.fragment:
        raise ValueError(f"{where} must not have a query or fragment. Received: {mask_url(raw)!r}")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{where} has a port that is not a number from 0 to 65535. Received: {raw!r}") from None
    return raw.rstrip("/")


_REDIS_SCHEMES = ("redis", "rediss", "unix")
_DB_PATH = re.compile(r"/?\d*")


def check_redis_url(name: str, url: str, where: str = "") -> None:
    """Raises ValueError, naming the setting's variable (or ``where`` the URL came from: the file of
    IMGQ_BROKER_URL_FILE) and never the password, when ``url`` is not a Redis URL that redis-py and Celery's
    broker (kombu) both read as written.

    A raw '#', '/', '?' or '@' in a password ends the password early: urlsplit then reads the rest of it
    as a port, a path or a fragment, redis-py and kombu fail with a message that quotes part of the
    password, or connect elsewhere. imgq asks for percent-encoding instead of guessing. A password in the
    query (?password=) is refused too: redis-py reads it, kombu fails on it.
    """
    if not url and name == "results_url":
        return  # the broker's Redis
    where = where or f"{env_var(name)} (--{name.replace('_', '-')})"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _REDIS_SCHEMES:
        raise ValueError(f"{where} must be a redis://, rediss:// or unix:// URL.")
    if "#" in url:
        raise ValueError(f"{where} holds a '#': percent-encode it in the password (%23).")
    parts = urlsplit(url)
    if "@" in parts.path + parts.query or parts.netloc.count("@") > 1:
        raise ValueError(f"{where} has a '/', '?' or '@' in its password: percent-encode them (%2F, %3F, %40).")
    if any(key.lower() == "password" for key, _ in parse_qsl(parts.query)):
        raise ValueError(f"{where} has a password in its query: put it before the host, redis://:PASSWORD@host.")
    try:
        _ = parts.port  # urlsplit checks the port when asked for it
    except ValueError:
        raise ValueError(f"{where} has a port that is not a number from 0 to 65535 (a password with ':' "
                         "in it must be percent-encoded, %3A).") from None
    if scheme.lower() != "unix" and not _DB_PATH.fullmatch(parts.path):
        raise ValueError(f"{where} must end with a database number (/0), not {parts.path!r}.")


_QUERY_PASSWORD = re.compile(r"([?&;]password=)[^&;#\s]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for printing and logging; any shape of URL, even one
    check_redis_url refuses, and a ``password=`` in its query too.

    The credentials are what stands between ``://`` and the ``@`` that ends them: the last '@' of the URL
    when one stands after the host (an unencoded '/', '?' or '#' in the password), so that a malformed URL
    is masked too much rather than too little. Credentials without a ':' are all masked (a password
    written where the user name goes).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host_end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@") if "@" in rest[host_end:] else rest.rfind("@", 0, host_end)
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        rest = (f"{user}:***" if colon else "***") + rest[at:]
    return scheme + sep + _QUERY_PASSWORD.sub(r"\1***", rest)
