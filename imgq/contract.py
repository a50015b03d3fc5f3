"""The queue contract: what the producer sends, what the worker writes back, and where.

Both sides import this module and nothing else of each other. It names the Celery task and queue, defines
the batch message and the result record, builds every Redis key, and holds the Celery configuration both
ends must agree on. It never imports TensorFlow.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass

from imgq.settings import Settings

MESSAGE_VERSION = 1

TASK_CLASSIFY_BATCH = "imgq.classify_batch"
# The one task: classify a batch of images of one job. Sent by name, so the producer never imports the worker.

TASK_SCHEDULED_SCAN = "imgq.scheduled_scan"
# Fired by `imgq beat` for a schedule (args: [name]): one tick of its incremental scan, which submits a job of
# the files that are new or changed. Sent by name, like the batches, to the same queue.

MODEL_NAME = "resnet50"

ERROR_CODES = {
    "missing": "the file does not exist",
    "unreadable": "the file exists but cannot be read (permissions, a directory, a symlink loop)",
    "not_an_image": "the content is not an image format imgq opens",
    "corrupt": "an image that fails to decode (truncated, damaged)",
    "too_large": "a file over IMGQ_MAX_FILE_BYTES, more pixels than IMGQ_MAX_PIXELS (decompression bomb guard), or a "
                 "WebP that would take more memory to decode than such an image",
    "forbidden": "outside the worker's IMGQ_ALLOWED_ROOTS",
    "worker_crashed": "the worker process died while decoding this image, on repeated deliveries",
    "dump_failed": "classified, but its activation dump could not be written (disk full, permissions)",
    "internal": "a failure of imgq itself, not of the image",
}


JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
KNOWN_MODES = ("", "skip", "refresh")


class MessageError(ValueError):
    """A task message that does not follow the contract."""


@dataclass(frozen=True)
class BatchMessage:
    """One task: images ``(image id, absolute path)`` of ``job``, in submission order.

    ``activations``: Keras layer names whose outputs are dumped per image (``activations_dtype``), in the
    same forward pass as the classification. Absent from the message when empty.
    """

    job: str
    batch: int
    images: tuple[tuple[int, str], ...]
    top_k: int
    activations: tuple[str, ...] = ()
    activations_dtype: str = "float16"
    known: str = ""
    # The content-hash index of images already classified (imgq/known.py): "" leaves it alone, "skip"
    # answers known images from it without a forward pass, "refresh" recomputes them and updates it.

    def to_dict(self) -> dict:
        data = {
            "v": MESSAGE_VERSION,
            "job": self.job,
            "batch": self.batch,
            "images": [list(item) for item in self.images],
            "top_k": self.top_k,
        }
        if self.activations:
            data.update(activations=list(self.activations), activations_dtype=self.activations_dtype)
        if self.known:
            data["known"] = self.known
        return data

    @classmethod
    def from_dict(cls, data: dict) -> BatchMessage:
        """Parse a message; raises MessageError saying what was expected and what was received."""
        if not isinstance(data, dict) or data.get("v") != MESSAGE_VERSION:
            raise MessageError(f"Expected a batch message of version {MESSAGE_VERSION}. Received: {data!r:.200}")
        try:
            images = tuple((int(image), str(path)) for image, path in data["images"])
            message = cls(job=str(data["job"]), batch=int(data["batch"]), images=images, top_k=int(data["top_k"]),
                          activations=tuple(str(name) for name in data.get("activations", ())),
                          activations_dtype=str(data.get("activations_dtype", "float16")),
                          known=str(data.get("known", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"Malformed batch message ({exc}). Received: {data!r:.200}") from None
        # The job id names a folder of activation dumps: it must never be a path.
        if (not JOB_ID.fullmatch(message.job) or message.activations_dtype not in ("float16", "float32")
                or message.known not in KNOWN_MODES):
            raise MessageError(f"Expected a job id of letters and digits, a float16/float32 dump dtype and a known "
                               f"mode in {KNOWN_MODES}. Received: {message.job!r}, {message.activations_dtype!r}, "
                               f"{message.known!r}")
        return message


def ok_record(job: str, image: int, path: str, top_k: list[dict], **provenance) -> dict:
    """The result of an image that was classified. ``top_k``: ``[{wnid, label, score}]``, best first.

    ``provenance``: model, weights, precision, worker, decode_ms, inference_ms, and ``activations``
    (``{file, dtype, bytes, layers: {name: shape}}``) when the job dumps activations.
    """
    return {"job": job, "image": image, "path": path, "status": "ok", "top_k": top_k, "error": None,
            **provenance}


def error_record(job: str, image: int, path: str, code: str, message: str, **provenance) -> dict:
    """The result of an image that could not be classified; ``code`` is one of ERROR_CODES."""
    if code not in ERROR_CODES:
        raise ValueError(f"Expected an error code in {sorted(ERROR_CODES)}. Received: {code!r}")
    return {"job": job, "image": image, "path": path, "status": "error", "top_k": [],
            "error": {"code": code, "message": message}, **provenance}


class Keys:
    """Every Redis key imgq uses, as ``<namespace>:<noun>:<id>``."""

    def __init__(self, namespace: str):
        self.ns = namespace

    @property
    def jobs(self) -> str:
        """Sorted set of job ids, scored by creation time."""
        return f"{self.ns}:jobs"

    def job(self, job: str) -> str:
        """Hash: the job record (name, created, parameters, total, timestamps)."""
        return f"{self.ns}:job:{job}"

    def results(self, job: str) -> str:
        """Hash: image id -> result record (JSON). One field per image, so a redelivery overwrites."""
        return f"{self.ns}:results:{job}"

    def failed(self, job: str) -> str:
        """Set of image ids whose record is an error; a set, so a redelivery cannot count twice."""
        return f"{self.ns}:failed:{job}"

    def batches(self, job: str) -> str:
        """List: the job's batch messages (JSON) in order, kept to re-queue and to export in order."""
        return f"{self.ns}:batches:{job}"

    @property
    def active(self) -> str:
        """Set of the ids of jobs not yet done or cancelled: what the reconciler looks at."""
        return f"{self.ns}:active"

    def attempts(self, job: str) -> str:
        """Hash: batch number -> deliveries so far (the broker does not count redeliveries)."""
        return f"{self.ns}:attempts:{job}"

    def inflight(self, job: str) -> str:
        """Hash: batch number -> id of the worker classifying it now (removed when its records are stored)."""
        return f"{self.ns}:inflight:{job}"

    def suspects(self, job: str) -> str:
        """Hash: image id -> worker id, set while a batch in isolation decodes that image. Still there after
        a delivery, it names the image that killed the worker."""
        return f"{self.ns}:suspects:{job}"

    def known(self, model: str, top_k: int) -> str:
        """Hash: content digest of an image -> its packed top-k (or a claim while it is computed), for one
        model (weights and precision) and one k: imgq/known.py."""
        return f"{self.ns}:known:{model}:{top_k}"

    @property
    def reconcile_lock(self) -> str:
        """String with a TTL: held by the one worker reconciling jobs at the moment."""
        return f"{self.ns}:reconcile-lock"

    def worker(self, hostname: str) -> str:
        """String with a TTL: a live worker's heartbeat (JSON)."""
        return f"{self.ns}:worker:{hostname}"

    @property
    def worker_pattern(self) -> str:
        return f"{self.ns}:worker:*"

    @property
    def schedules(self) -> str:
        """Sorted set of schedule names, scored by creation time."""
        return f"{self.ns}:schedules"

    def schedule(self, name: str) -> str:
        """Hash: a schedule's definition (paths, when, submit options, paused) and its job in flight."""
        return f"{self.ns}:schedule:{name}"

    def schedule_runs(self, name: str) -> str:
        """List: the schedule's recent ticks (JSON), newest first, capped."""
        return f"{self.ns}:schedule:{name}:runs"

    def schedule_lock(self, name: str) -> str:
        """String with a TTL: held by the one tick of the schedule running, so two never interleave."""
        return f"{self.ns}:schedule:{name}:lock"

    def scan(self, name: str, part: str) -> str:
        """Hash: incremental scan state of a schedule, ``part`` one of known, errors, pending (producer.scan)."""
        return f"{self.ns}:scan:{name}:{part}"

    @property
    def redbeat_prefix(self) -> str:
        """Prefix of celery-redbeat's keys: ``<prefix><name>`` per schedule entry, ``<prefix>:schedule`` (its
        due times), ``<prefix>:lock`` (the one beat that fires)."""
        return f"{self.ns}:redbeat:"


def queue_name(settings: Settings) -> str:
    return settings.namespace


def celery_config(settings: Settings) -> dict:
    """The Celery configuration shared by the producer and the workers."""
    config = _base_config(settings)
    if settings.broker_url.startswith("rediss://") and "ssl_cert_reqs" not in settings.broker_url:
        # Kombu connects to rediss:// WITHOUT checking the server's certificate unless told to.
        config["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return config


def beat_config(settings: Settings) -> dict:
    """The Celery configuration of `imgq beat` (on top of celery_config), and of the CLI writing its entries."""
    return {
        # Schedules are data in Redis (celery-redbeat), not a file or code: edited while beat runs, and its
        # lock lets one beat of several fire.
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "redbeat_redis_url": settings.broker_url,
        "redbeat_key_prefix": Keys(settings.namespace).redbeat_prefix,
        # Given explicitly: redbeat would otherwise fall back to the broker's transport options (and warn).
        "redbeat_redis_options": {},
        "redbeat_lock_timeout": settings.beat_lock_timeout,
        # How long beat may sleep before reading the schedules again: bounds how late a new one is seen.
        "beat_max_loop_interval": settings.beat_max_interval,
        # No result backend, so nothing to clean: keeps Celery from adding its daily backend_cleanup entry.
        "result_expires": None,
    }


def _base_config(settings: Settings) -> dict:
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # Unacknowledged batches return to the queue after this long (a worker died holding them).
            "visibility_timeout": settings.visibility_timeout,
            # Kombu's own keys (queues, unacked) live under our namespace too.
            "global_keyprefix": f"{settings.namespace}:kombu:",
        },
        # JSON only: a pickled message could run code in the worker.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # The results store is the product; Celery's own result backend is not used.
        "task_ignore_result": True,
        "result_backend": None,
        "task_default_queue": queue_name(settings),
        "task_routes": {TASK_CLASSIFY_BATCH: {"queue": queue_name(settings)}},
        # Acknowledge after the batch is stored, so a worker that dies mid-batch loses nothing.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A worker reserves no more batches than it has threads (IMGQ_CONCURRENCY): the rest stay in
        # Redis for other workers.
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": False,
    }
