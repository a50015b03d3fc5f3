"""A head: a linear classifier of the user's own labels, read from a model's pooled features.

`imgq learn` fits one (producer/learn.py) and writes it as a JSON file; `--head HEAD` on submit, classify and
schedule add sends it to the workers, which apply it in the same forward pass as the base model
(worker/batches/heads.py). The file holds everything needed to apply it and to say where it comes from:

    {"format": "imgq-head", "version": 1, "name": "beach", "labels": ["beach", "not-beach"],
     "base_model": "resnet50", "weights": "imagenet", "feature_layer": "avg_pool",
     "activation": "softmax" | "sigmoid", "coef": [[...], ...], "intercept": [...],
     "figures": {...}, "examples": {"beach": 12, ...}, "created": "2026-12-02T13:00:00+00:00"}

``coef`` (one row per label, or one row for two labels with ``sigmoid``) and ``intercept`` already include
the standardisation of the features: a worker needs numpy alone, never scikit-learn. The head travels to the
workers through Redis under its digest (``Keys.head``), so a worker never opens a path a message names.

This module reads and checks heads without numpy: the producer imports it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

from imgq.labels.names import label_problem
from imgq.storage.files import RefusedFile, read_regular

FORMAT, VERSION = "imgq-head", 1
MAX_HEAD_BYTES = 64 << 20
# A head of 1000 labels over 2048 features is ~40 MB of JSON; anything larger is not a head.
MAX_LABELS = 1000
# A head's labels follow the rule of every label (imgq/labels/names.py), as a model folder's labels.txt does.
ACTIVATIONS = ("softmax", "sigmoid")


class HeadError(ValueError):
    """A head file that cannot be used; the message is one line naming the file and what is wrong."""


@dataclass(frozen=True)
class Head:
    name: str
    labels: tuple[str, ...]
    base_model: str
    weights: str
    feature_layer: str
    activation: str
    coef: tuple[tuple[float, ...], ...]
    intercept: tuple[float, ...]
    figures: dict = field(default_factory=dict, compare=False)
    examples: dict = field(default_factory=dict, compare=False)
    created: str = ""

    @property
    def features(self) -> int:
        return len(self.coef[0])

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "name": self.name, "labels": list(self.labels),
                "base_model": self.base_model, "weights": self.weights, "feature_layer": self.feature_layer,
                "activation": self.activation, "coef": [list(row) for row in self.coef],
                "intercept": list(self.intercept), "figures": self.figures, "examples": self.examples,
                "created": self.created}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False).encode()

    @property
    def digest(self) -> str:
        """What identifies the head in Redis and in messages: 24 hex digits of the SHA-256 of its bytes."""
        return hashlib.sha256(self.to_bytes()).hexdigest()[:24]

    def mismatch(self, model: str, weights: str) -> str | None:
        """Why this head cannot be applied to ``model`` with ``weights`` (None: it can). Features made by
        other weights mean other things: a head is tied to the base model and the weights it was fitted on."""
        if self.base_model != model:
            return f"head {self.name!r} was learned on model {self.base_model}, not {model}"
        if self.weights != weights:
            return f"head {self.name!r} was learned with weights {self.weights}, not {weights}"
        return None


def check_label(label: str) -> str:
    """``label`` when it can be a head's label (a keyword: imgq/labels/names.py); raises HeadError."""
    problem = label_problem(label)
    if problem is not None:
        raise HeadError(problem)
    return label


def from_dict(data: object, source: str = "head") -> Head:
    """The Head in ``data`` (a head file's JSON); raises HeadError naming ``source``."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise HeadError(f"{source} is not an imgq head (made by `imgq learn`).")
    if data.get("version") != VERSION:
        raise HeadError(f"{source}: head version {data.get('version')!r}; this imgq reads version {VERSION}.")
    try:
        head = Head(name=str(data["name"]), labels=tuple(str(x) for x in data["labels"]),
                    base_model=str(data["base_model"]), weights=str(data["weights"]),
                    feature_layer=str(data["feature_layer"]), activation=str(data["activation"]),
                    coef=tuple(tuple(float(x) for x in row) for row in data["coef"]),
                    intercept=tuple(float(x) for x in data["intercept"]),
                    figures=dict(data.get("figures") or {}), examples=dict(data.get("examples") or {}),
                    created=str(data.get("created", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise HeadError(f"{source}: a damaged head ({type(exc).__name__}: {exc}).") from None
    check_head(head, source)
    return head


def check_head(head: Head, source: str = "head") -> None:
    """Raises HeadError (one line naming ``source`` and what is wrong) unless ``head`` can be applied: its
    shape fits its labels and activation, its labels can be keywords, and every number it applies (each
    coefficient and intercept; the standardisation is folded into them, so there are no means or scales) is
    finite. A NaN or an infinity (JSON's NaN and Infinity tokens, or strings float() reads so) would give every
    image a NaN score: it is named by its place, ``intercept[0]`` or ``coef[1][7]``."""
    _check_shape(head, source)
    _check_finite(head, source)


def _check_finite(head: Head, source: str) -> None:
    numbers = [(f"coef[{i}]", row) for i, row in enumerate(head.coef)] + [("intercept", head.intercept)]
    for name, values in numbers:
        if not all(map(math.isfinite, values)):  # the common case at C speed; the place only when wrong
            place, value = next((i, x) for i, x in enumerate(values) if not math.isfinite(x))
            raise HeadError(f"{source}: {name}[{place}] is {value}, not a finite number.")


def _check_shape(head: Head, source: str) -> None:
    n = len(head.labels)
    rows = 1 if head.activation == "sigmoid" else n
    problems = []
    if head.activation not in ACTIVATIONS:
        problems.append(f"activation {head.activation!r} is not one of {', '.join(ACTIVATIONS)}")
    if not 2 <= n <= MAX_LABELS or len(set(head.labels)) != n:
        problems.append(f"expected 2 to {MAX_LABELS} distinct labels, found {n}")
    if len(head.coef) != rows or len(head.intercept) != rows or len({len(r) for r in head.coef}) != 1:
        problems.append(f"expected {rows} coefficient rows of one length and {rows} intercepts")
    elif not head.coef[0]:
        problems.append("expected coefficients, found an empty row")
    if problems:
        raise HeadError(f"{source}: {'; '.join(problems)}.")
    for label in head.labels:
        try:
            check_label(label)
        except HeadError as exc:
            raise HeadError(f"{source}: {exc}") from None


def loads(raw: bytes, source: str = "head") -> Head:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HeadError(f"{source} is not an imgq head: not JSON ({exc}).") from None
    return from_dict(data, source)


def read_head(path: str) -> Head:
    """The head in the file at ``path``: a regular file (a link to one is followed: the user named it), at
    most MAX_HEAD_BYTES, opened without blocking (a FIFO is refused, not waited on): imgq.storage.files.read_regular.
    Raises HeadError."""
    try:
        found = read_regular(path, MAX_HEAD_BYTES, follow_links=True)
    except RefusedFile as exc:
        raise HeadError(f"Cannot read the head {path}: {exc}.") from None
    except OSError as exc:
        raise HeadError(f"Cannot read the head {path}: {exc.strerror or exc}.") from None
    if found is None:
        raise HeadError(f"Cannot read the head {path}: no such file.")
    return loads(found[0], path)


def share(client, keys, head: Head) -> str:
    """Put ``head`` where the workers read it (``Keys.head``); returns its digest. Kept without expiry:
    a user has a few heads, each tens of kilobytes, and a job or schedule may apply one for months."""
    digest = head.digest
    client.set(keys.head(digest), head.to_bytes())
    return digest


def fetch(client, keys, digest: str) -> Head:
    """The head a message names by ``digest``; raises HeadError when Redis does not have it."""
    raw = client.get(keys.head(digest))
    if raw is None:
        raise HeadError(f"head {digest} is not in Redis (deleted?): submit the job again with --head")
    return loads(raw, f"head {digest}")


def refusal(head: Head, model: str, live_weights: set[str]) -> str | None:
    """Why a job of ``model`` must not apply ``head``, judged at submit (None: it may). ``live_weights``:
    the weights of the live workers of ``model``; with none alive, only the model is checked here, and a
    worker with other weights later gives each image's head an error instead of labels."""
    if head.base_model.split("@")[0] != model:  # a folder model's id is <name>@sha256:<digest>: jobs name it
        return (f"The head {head.name!r} was learned on model {head.base_model}; this job runs {model}. "
                f"Learn it again on {model} (`imgq learn`), or submit with the head's model.")
    if live_weights and head.weights not in live_weights:
        return (f"The head {head.name!r} was learned with weights {head.weights}; the live workers of {model} "
                f"run {', '.join(sorted(live_weights))}. Learn it again with those weights.")
    return None
