"""The queue contract: what the producer sends, what the worker writes back, and where.

Both sides import this module and nothing else of each other. It names the Celery task and queue, defines
the batch message and the result record, and the queue of each model (imgq/celery_config.py holds the Celery
configuration both ends must agree on; imgq/keys.py every Redis key). It never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass

MESSAGE_VERSION = 1
REF_VERSION = 2

TASK_CLASSIFY_BATCH = "imgq.classify_batch"
# The one task: classify a batch of images of one job (args: [BatchRef.to_dict()]). Sent by name, so the
# producer never imports the worker.

TASK_SCHEDULED_SCAN = "imgq.scheduled_scan"
# Fired by `imgq beat` for a schedule (args: [name]): one tick of its incremental scan, which submits a job of
# the files that are new or changed. Sent by name, like the batches, to the same queue.

MODEL_NAME = "resnet50"
# The model of a job that names none, and of records written before jobs named their model.


ERROR_CODES = {
    "missing": "the file does not exist (an s3:// object or its bucket: no such key or bucket)",
    "unreadable": "the file exists but cannot be read (permissions, a directory, a symlink loop; an object store "
                  "refused the request)",
    "not_an_image": "the content is not an image format imgq opens",
    "corrupt": "an image that fails to decode (truncated, damaged)",
    "too_large": "a file over IMGQ_MAX_FILE_BYTES, more pixels than IMGQ_MAX_PIXELS (decompression bomb guard), or a "
                 "WebP or HEIF that would take more memory to decode than such an image",
    "no_preview": "a camera RAW file without an embedded preview (imgq classifies the preview, not the sensor data)",
    "forbidden": "outside the worker's IMGQ_ALLOWED_ROOTS (never read), or refused by the object store (AccessDenied)",
    "worker_crashed": "the worker process died while decoding this image, on repeated deliveries",
    "dump_failed": "classified, but its activation dump could not be written (disk full, permissions)",
    "model_output": "the model's outputs for this image are not finite numbers (NaN or infinite): a fault of the "
                    "model (its weights, a division by zero in a layer), not of the image",
    "internal": "a failure of imgq itself, not of the image",
}


IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "HEIF", "RAW")
# What a worker opens, recognised by content (worker/images/formats.py): Pillow's plugins (the JPEG plugin also opens
# phone cameras' multi-picture MPO files); HEIF, HEIC included, through pillow-heif (libheif), HEVC-coded only
# (not AVIF); RAW: camera raw files through LibRaw (rawpy), of which the embedded JPEG preview is classified.
# Never EPS and kin: those shell out to external programs.

PILLOW_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# The IMAGE_FORMATS that Pillow opens by itself (`imgq report`'s thumbnails: the producer has no pillow-heif).

RAW_EXTENSIONS = ("dng", "cr2", "cr3", "nef", "nrw", "arw", "srf", "sr2", "orf", "rw2", "rwl", "raf", "pef",
                  "srw", "3fr", "iiq", "erf")
# Camera raw files whose LibRaw reads an embedded preview from. Most are TIFF inside: a TIFF-structured file is
# taken as RAW when it says so itself (a DNG's DNGVersion tag, a CR2's marker) or is named so (a NEF, an ARW);
# ORF, RW2, RAF and CR3 have signatures of their own.

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "heic", "heif", "hif",
                    *RAW_EXTENSIONS)
# File names the walk takes from folders (case-insensitive); the worker decides by content (a PNG named .jpg
# works), among IMAGE_FORMATS.

JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A job id names a folder of activation dumps: never a path.

NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# A namespace or a schedule name: part of Redis keys and of SCAN patterns, so never a ':' or a glob character.

KNOWN_MODES = ("", "skip", "refresh")

HEAD_DIGEST = re.compile(r"[0-9a-f]{24}")  # imgq.labels.heads.Head.digest: part of a Redis key

WEIGHTS_KEY = re.compile(r"[^\x00-\x1f\x7f]{1,400}")
# What a message asks for in ``weights`` (imgq.models.weights.weights_key): "imagenet", "random:7",
# "file:<name>:sha256:<12 hex>". Compared, never opened: a file's name is there for people to read.

PRECISIONS = ("fp32", "bf16", "int8")
# What a job may ask its passes to run in (BatchMessage.precision; "": whatever its worker runs, which the CLI
# calls "any"), and what a worker serves such jobs at (Heartbeat.job_precision).

UNTRAINED_NOTE = " (untrained: labels are meaningless)"
# What the weights id of random weights adds to their key, so that every record made with them says so.


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
    # The content-hash index of images already classified (imgq/results/known.py): "" leaves it alone, "skip"
    # answers known images from it without a forward pass, "refresh" recomputes them and updates it.
    sink: bool = False
    # The batch's records go as one Parquet file into the workers' sink folder (IMGQ_SINK_DIR, imgq/results/sink.py)
    # instead of into Redis. The folder is the worker's setting, never the message's: a message must not
    # choose where a worker writes.
    head: str = ""
    # The digest of a head (imgq/labels/heads.py) the worker applies to the base model's pooled features in the
    # same forward pass; the head itself is in Redis (Keys.head), never a path the worker opens.
    model: str = MODEL_NAME
    # The name of the model the job asked for: which workers' queue its batches go to (queue_name). A name,
    # never a path: a worker loads only the model its operator set, and refuses a batch of another.
    weights: str = ""
    # The weights the job asked for, as imgq.models.weights.weights_key names them ("": any weights of the
    # model, as every message before jobs named theirs): its batches wait in the queue of those weights, and a
    # worker with others never classifies them (serves_weights).
    precision: str = ""
    # The precision the job asked its forward passes to run in (one of PRECISIONS; "": any, as every message
    # before jobs named theirs): its batches wait in the queue of that precision, and a worker that does not
    # serve it now never classifies them (serves_precision).
    embeddings: bool = False
    # Keep each image's feature-layer vector (L2-normalised, float16), perceptual hash and content hash in one
    # file per batch under the dump root (imgq/alike/batchfile.py), for `imgq duplicates` and `imgq similar`.

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
        if self.sink:
            data["sink"] = True
        if self.head:
            data["head"] = self.head
        if self.model != MODEL_NAME:
            data["model"] = self.model
        if self.weights:
            data["weights"] = self.weights
        if self.precision:
            data["precision"] = self.precision
        if self.embeddings:
            data["embeddings"] = True
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
                          known=str(data.get("known", "")), sink=data.get("sink") is True,
                          head=str(data.get("head", "")), model=str(data.get("model", MODEL_NAME)),
                          weights=_weights_field(data.get("weights", "")),
                          precision=_precision_field(data.get("precision", "")),
                          embeddings=data.get("embeddings") is True)
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"Malformed batch message ({exc}). Received: {data!r:.200}") from None
        # The job id names a folder of activation dumps: it must never be a path.
        if (not JOB_ID.fullmatch(message.job) or message.activations_dtype not in ("float16", "float32")
                or message.known not in KNOWN_MODES or (message.head and not HEAD_DIGEST.fullmatch(message.head))):
            raise MessageError(f"Expected a job id of letters and digits, a float16/float32 dump dtype, a known "
                               f"mode in {KNOWN_MODES} and a head digest. Received: {message.job!r}, "
                               f"{message.activations_dtype!r}, {message.known!r}, {message.head!r}")
        if not NAME.fullmatch(message.model):  # it names a queue (imgq.models.spec.check_model_name), never a path
            raise MessageError(f"Expected a model name (letters, digits, '.', '_', '-'). Received: {message.model!r}")
        return message


def _weights_field(value: object) -> str:
    """A message's ``weights``: "" or a weights key (WEIGHTS_KEY). Raises ValueError."""
    if value == "":
        return ""
    if not isinstance(value, str) or not WEIGHTS_KEY.fullmatch(value):
        raise ValueError(f"weights must be a weights key of at most 400 printable characters, not {value!r:.60}")
    return value


def _precision_field(value: object) -> str:
    """A message's ``precision``: "" or one of PRECISIONS. Raises ValueError."""
    if value != "" and value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {value!r:.60}")
    return str(value)


@dataclass(frozen=True)
class BatchRef:
    """What a task message carries: which batch of which job. The batch itself (a BatchMessage: its images
    and options) is kept once, in the job's batch list (``Keys.batches``), and the worker reads it from there;
    a queued batch costs Redis its paths once, not twice."""

    job: str
    batch: int
    model: str = MODEL_NAME
    # The job's model: the queue the reference is sent to (queue_name). Not in the task message: the worker
    # reads the model from the stored batch, the one place it is kept.
    weights: str = ""
    # The weights the job asked for (BatchMessage.weights): with the model, the queue the reference goes to.
    precision: str = ""
    # The precision the job asked for (BatchMessage.precision): with the model and weights, the queue.

    def to_dict(self) -> dict:
        return {"v": REF_VERSION, "job": self.job, "batch": self.batch}

    @classmethod
    def from_dict(cls, data: dict) -> BatchRef:
        """Parse a reference; raises MessageError saying what was expected and what was received."""
        if not isinstance(data, dict) or data.get("v") != REF_VERSION:
            raise MessageError(f"Expected a batch reference of version {REF_VERSION}. Received: {data!r:.200}")
        try:
            ref = cls(job=str(data["job"]), batch=int(data["batch"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"Malformed batch reference ({exc}). Received: {data!r:.200}") from None
        if not JOB_ID.fullmatch(ref.job) or ref.batch < 0:
            raise MessageError(f"Expected a job id and a batch number. Received: {data!r:.200}")
        return ref


@dataclass(frozen=True)
class Label:
    """One of an image's top-k classes, best first: for an ImageNet model its WordNet id, Keras' label and
    the probability (``{wnid, label, score}``, the record format since the start); for a user's model
    (``wnid`` empty) the class name of its labels.txt, the class's ``index`` in the model's outputs and the
    probability (``{label, index, score}``)."""

    wnid: str
    label: str
    score: float
    index: int | None = None

    def to_dict(self) -> dict:
        if self.wnid or self.index is None:
            return {"wnid": self.wnid, "label": self.label, "score": self.score}
        return {"label": self.label, "index": self.index, "score": self.score}

    @classmethod
    def from_dict(cls, data: dict) -> Label:
        """Either form of ``to_dict``. Raises KeyError, TypeError or ValueError on anything else."""
        index = data.get("index")
        return cls(str(data.get("wnid", "")) if index is not None else str(data["wnid"]), str(data["label"]),
                   float(data["score"]), None if index is None else int(index))


def class_position(label: Label) -> int | None:
    """The label's index in its model's outputs: given for a user's model's class, the wnid's position for an
    ImageNet class (None for a wnid that is not one of the 1000)."""
    if label.index is not None or not label.wnid:
        return label.index
    from imgq.labels.classes import class_numbers

    return class_numbers().get(label.wnid)


@dataclass(frozen=True)
class Failure:
    """Why an image has no labels: ``code`` one of ERROR_CODES, ``message`` one line for a person."""

    code: str
    message: str

    def __post_init__(self):
        if self.code not in ERROR_CODES:
            raise ValueError(f"Expected an error code in {sorted(ERROR_CODES)}. Received: {self.code!r}")


@dataclass(frozen=True)
class ResultRecord:
    """What an image ends with: exactly one per submitted image, ``ok`` with labels or ``error`` with a
    Failure. Its dict form (``to_dict``) is what `imgq results` prints, line by line.

    Provenance: ``model``/``weights``/``precision``/``runtime`` made the labels, ``worker`` ran them;
    ``decode_ms`` and ``inference_ms`` (this image's share of its forward pass) time them; ``known``: answered
    from the content-hash index (imgq/results/known.py); ``activations``: ``{file, dtype, bytes, layers: {name:
    shape}}`` when the job dumps activations.
    """

    job: str
    image: int
    path: str
    status: str
    top_k: tuple[Label, ...] = ()
    error: Failure | None = None
    model: str = MODEL_NAME
    weights: str = ""
    precision: str = ""
    runtime: str = ""
    worker: str = ""
    decode_ms: float = 0.0
    inference_ms: float = 0.0
    known: bool = False
    activations: dict | None = None
    head: dict | None = None
    # The job's head applied to this image: ``{"name", "top_k": [{"label", "score"}, ...]}``, or ``{"name",
    # "error"}`` when this worker's model or weights are not the head's.

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def untrained(self) -> bool:
        """Made with random weights: its labels mean nothing."""
        return is_untrained(self.weights)

    def to_dict(self) -> dict:
        data = {"job": self.job, "image": self.image, "path": self.path, "status": self.status,
                "top_k": [label.to_dict() for label in self.top_k],
                "error": None if self.error is None else {"code": self.error.code, "message": self.error.message},
                "model": self.model, "weights": self.weights, "precision": self.precision}
        if self.runtime:
            data["runtime"] = self.runtime
        data.update(worker=self.worker, decode_ms=self.decode_ms, inference_ms=self.inference_ms)
        if self.known:
            data["known"] = True
        if self.activations is not None:
            data["activations"] = self.activations
        if self.head is not None:
            data["head"] = self.head
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ResultRecord:
        """Parse a record; raises MessageError saying what was expected and what was received."""
        try:
            error = data.get("error")
            return cls(job=str(data["job"]), image=int(data["image"]), path=str(data["path"]),
                       status=str(data["status"]),
                       top_k=tuple(Label.from_dict(t) for t in data.get("top_k") or ()),
                       error=None if not error else Failure(str(error["code"]), str(error["message"])),
                       model=str(data.get("model", MODEL_NAME)), weights=str(data.get("weights", "")),
                       precision=str(data.get("precision", "")), runtime=str(data.get("runtime", "")),
                       worker=str(data.get("worker", "")), decode_ms=float(data.get("decode_ms", 0.0)),
                       inference_ms=float(data.get("inference_ms", 0.0)), known=bool(data.get("known", False)),
                       activations=data.get("activations"), head=data.get("head"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MessageError(f"Malformed result record ({exc}). Received: {data!r:.200}") from None


def ok_record(job: str, image: int, path: str, top_k, **provenance) -> ResultRecord:
    """The record of an image that was classified. ``top_k``: Labels (or their dicts: ``{wnid, label,
    score}``, ``{label, index, score}``), best first; ``provenance``: the other fields of ResultRecord."""
    labels = tuple(t if isinstance(t, Label) else Label.from_dict(t) for t in top_k)
    return ResultRecord(job, image, path, "ok", labels, None, **provenance)


def error_record(job: str, image: int, path: str, code: str, message: str, **provenance) -> ResultRecord:
    """The record of an image that could not be classified; ``code`` is one of ERROR_CODES (else ValueError)."""
    return ResultRecord(job, image, path, "error", (), Failure(code, message), **provenance)


def is_untrained(weights: str) -> bool:
    """True for the weights ids of random weights (``random:SEED (untrained: ...)``): labels without meaning."""
    return weights.startswith("random")


def weights_key_of(weights_id: str) -> str:
    """The weights key in a weights id (a heartbeat's, a record's): the id, without UNTRAINED_NOTE."""
    return weights_id.removesuffix(UNTRAINED_NOTE)


def serves_weights(weights_id: str, asked: str) -> bool:
    """True when a worker whose weights id is ``weights_id`` has the weights a job ``asked`` for (a weights
    key; "" takes any)."""
    return not asked or weights_key_of(weights_id) == asked


def serves_precision(job_precision: str, asked: str) -> bool:
    """True when a worker that serves jobs at ``job_precision`` (Heartbeat.job_precision: one of PRECISIONS, or
    "" for none) takes a job that ``asked`` for a precision (one of PRECISIONS; "" takes any)."""
    return not asked or job_precision == asked


WORKER_SAYS, WORKER_STOPS = "imgq worker: ", "; exiting"
# A worker's own lines on stderr begin with WORKER_SAYS (the steps of its start, its ready line, why it stops);
# the last line of one that stops ends with WORKER_STOPS (`imgq classify` reads both: local/workers.py).
STARTING, READY, FAILED = "starting", "ready", "failed"
# A heartbeat's ``state``: a worker beats ``starting`` from the start of its model's load (``detail``: the step
# it is on), ``ready`` once it takes batches, ``failed`` (``detail``: why) when it cannot serve and exits, its
# key then living its three beats. Only ready workers count as live (ResultStore.workers).


@dataclass(frozen=True)
class Heartbeat:
    """What a worker says about itself every IMGQ_HEARTBEAT_SECONDS (``Keys.worker``, with a TTL).

    The reconciler reads ``in_hand`` (the batches it holds); `imgq status --workers` and the health check
    read the rest. A beat without a ``state`` (an older worker's) is a ready one.
    """

    hostname: str
    pid: int = 0
    host: str = ""
    model: str = MODEL_NAME
    # The name of the model the worker serves (the queue it consumes); ``model_id`` adds its file's digest
    # for a user's model (imgq.models.spec.ModelSpec.id).
    model_id: str = ""
    weights: str = ""
    precision: str = ""
    job_precision: str = ""
    # The precision of the jobs this worker takes when they ask for one (it consumes their queues): the one its
    # passes run in (an INT8 worker calibrating on its first images says int8: it classifies them in fp32, and
    # their records say so; once it refuses INT8, fp32). "": none (a worker older than jobs asking for one, a
    # prefork INT8 worker, whose children each decide apart): it takes only the jobs that ask for no precision.
    precision_note: str = ""
    # What an INT8 worker says of INT8: its agreement, why it serves fp32, or that it is still calibrating.
    runtime: str = ""
    runtime_choice: str = ""
    # How IMGQ_RUNTIME=auto chose the runtime and how sure that is ("auto: measured ... quiet: openvino, 1.44x",
    # or provisional: measured under load, to be measured again when quiet); empty for a runtime set by name.
    pool: str = ""
    concurrency: int = 0
    batch_size: int = 0
    started_at: float = 0.0
    sent_at: float = 0.0
    # When this beat was sent: a key that is still there but not sent again is a worker that has stopped.
    images_done: int = 0
    in_hand: tuple[tuple[str, int], ...] = ()
    images_per_second: float = 0.0
    model_load_seconds: float = 0.0
    warnings: tuple[str, ...] = ()
    # Conditions an operator must know about (e.g. a Redis that may evict imgq's keys).
    state: str = READY  # STARTING, READY or FAILED (above)
    detail: str = ""  # what a starting worker is doing, or why a failed one cannot serve

    @property
    def ready(self) -> bool:
        return self.state == READY

    @property
    def batches_in_hand(self) -> int:
        return len(self.in_hand)

    def serves(self, model: str, weights: str = "", precision: str = "") -> bool:
        """True when this worker takes the jobs of ``model`` asking for ``weights`` and ``precision`` ("": any)."""
        return (self.model == model and serves_weights(self.weights, weights)
                and serves_precision(self.job_precision, precision))

    def holds(self, job: str, batch: int) -> bool:
        return (job, batch) in self.in_hand

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.update(in_hand=[list(item) for item in self.in_hand], warnings=list(self.warnings),
                    batches_in_hand=self.batches_in_hand)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Heartbeat:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["in_hand"] = tuple((str(job), int(batch)) for job, batch in data.get("in_hand", ()))
        values["warnings"] = tuple(data.get("warnings", ()))
        return cls(**values)


def dump_path(root: str, job: str, image: int) -> str:
    """Where the activation dump of ``image`` of ``job`` is, under the dump root: ``<root>/<job>/<image>.npz``.

    ``job`` must be a job id (JOB_ID) and ``image`` an int, so the path cannot leave ``root``: raises
    ValueError otherwise.
    """
    if not JOB_ID.fullmatch(job):
        raise ValueError(f"Expected a job id of letters, digits, '_' or '-'. Received: {job!r}")
    return os.path.join(root, job, f"{int(image)}.npz")


def path_digest(path: str) -> bytes:
    """12 bytes of BLAKE2b of a file's absolute path: how the walk drops duplicates and the scan state keys
    files. A path costs its length, a digest 12 bytes; two paths colliding among a billion is a 1-in-10^11
    event."""
    return hashlib.blake2b(os.fsencode(path), digest_size=PATH_DIGEST_BYTES).digest()


PATH_DIGEST_BYTES = 12


def model_queue(namespace: str, model: str = MODEL_NAME, weights: str = "", precision: str = "") -> str:
    """``queue_name`` from a namespace: ``<ns>`` or ``<ns>.<model>``, and ``@<16 hex of the weights key's
    SHA-256>`` after it for a job that asked for weights (a key may hold any file name: a queue's name never
    does), then ``+<precision>`` for a job that asked for a precision."""
    queue = namespace if model == MODEL_NAME else f"{namespace}.{model}"
    queue = f"{queue}@{hashlib.sha256(weights.encode()).hexdigest()[:16]}" if weights else queue
    return f"{queue}+{precision}" if precision else queue
