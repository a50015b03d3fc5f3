"""Labels of result records as keywords in the images' XMP sidecars (`imgq tag`, and `imgq classify --tag`).

Which keywords are imgq's: those under the prefix in lr:hierarchicalSubject (``imgq|tench``) and
digiKam:TagsList (``imgq/tench``), and the plain dc:subject labels that correspond to them. Tagging makes
imgq's keywords in a sidecar exactly the labels chosen for its image (adding the missing ones, taking away
those no longer chosen), so a second run changes nothing; removing takes away all of imgq's and nothing else.
A plain dc:subject keyword that is also the leaf of someone else's hierarchical keyword (``places|tench``)
is theirs as well, and stays. Sidecars are written atomically; the images are only read (for their existence).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from imgq.contract import ResultRecord
from imgq.files import atomic_path
from producer import sidecars
from producer.export import labels_above
from producer.sidecars import HIERARCHICAL, SUBJECT, TAGS_LIST, Field, SidecarError

SIDECAR_NAMES = ("full", "stem")


class UntrainedWeights(ValueError):
    """The records were made with untrained (random) weights: their labels are meaningless."""


@dataclass(frozen=True)
class TagOptions:
    """prefix: the parent keyword that marks imgq's keywords; top and min_score: which labels of a record become
    keywords (the first ``top`` whose score is at least ``min_score``); sidecar_name: ``full`` (IMG_1.jpg.xmp,
    digiKam and darktable) or ``stem`` (IMG_1.xmp, Lightroom and Capture One); remove: take imgq's keywords away
    instead; dry_run: change no file; allow_untrained: tag even records made with random weights."""

    prefix: str = "imgq"
    top: int = 1
    min_score: float = 0.0
    sidecar_name: str = "full"
    remove: bool = False
    dry_run: bool = False
    allow_untrained: bool = False

    def __post_init__(self):
        if not self.prefix or any(c in self.prefix for c in "|/") or self.prefix != self.prefix.strip():
            raise ValueError(f"Expected a prefix without '|', '/' or surrounding blanks. Received: {self.prefix!r}")
        if self.sidecar_name not in SIDECAR_NAMES:
            raise ValueError(f"Expected a sidecar name in {SIDECAR_NAMES}. Received: {self.sidecar_name!r}")


@dataclass(frozen=True)
class SidecarChange:
    """What happened (or, in a dry run, would happen) to one sidecar: state is created, changed, deleted (a
    sidecar imgq created, emptied by a removal), unchanged, failed (message says why; the file was left alone)
    or missing-image (no sidecar written)."""

    path: str
    state: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    message: str = ""


@dataclass
class TagSummary:
    changes: list[SidecarChange] = field(default_factory=list)
    skipped_errors: int = 0  # records of images that failed to classify: their sidecars are not touched

    def count(self, state: str) -> int:
        return sum(1 for c in self.changes if c.state == state)

    @property
    def failed(self) -> list[SidecarChange]:
        return [c for c in self.changes if c.state in ("failed", "missing-image")]


def keyword(label: str) -> str:
    """A Keras label as a keyword people read: ``golden_retriever`` becomes ``golden retriever``."""
    return label.replace("_", " ")


def head_keywords(record: ResultRecord, options: TagOptions) -> list[str]:
    """The labels of the record's head (imgq learn) that become keywords: its first ``options.top`` scoring at
    least ``options.min_score``. A user's own labels are written as they were named, not re-spelt."""
    top = (record.head or {}).get("top_k") or []
    return [t["label"] for t in top if t["score"] >= options.min_score][: options.top]


def sidecar_path(image: str, naming: str) -> str:
    """IMG_1.jpg.xmp (full) or IMG_1.xmp (stem); an existing sidecar whose extension is .XMP is used as it is."""
    base = image if naming == "full" else os.path.splitext(image)[0]
    path = base + ".xmp"
    return base + ".XMP" if not os.path.exists(path) and os.path.exists(base + ".XMP") else path


def tag_records(records: Iterable[ResultRecord], options: TagOptions,
                on_change: Callable[[SidecarChange], None] | None = None) -> TagSummary:
    """Write (or, with ``options.remove``, take away) the keywords of every ok record into its image's sidecar.

    Every record is read before any file is written, so UntrainedWeights (raised when a record was made with
    random weights, unless ``options.allow_untrained``) leaves every sidecar as it was. Images that share a
    sidecar (IMG_1.jpg and IMG_1.cr2 with ``stem``) get the union of their labels. ``on_change`` is called
    with each sidecar's change as it is made. A sidecar that cannot be parsed is reported in the summary as
    failed and left untouched."""
    plan, summary = plan_sidecars(records, options)
    for path, (image, labels) in plan.items():
        change = tag_sidecar(path, image, labels, options)
        summary.changes.append(change)
        if on_change:
            on_change(change)
    return summary


def plan_sidecars(records: Iterable[ResultRecord], options: TagOptions) -> tuple[dict[str, tuple[str, list[str]]],
                                                                           TagSummary]:
    """Sidecar path -> (one of its images, the keywords chosen for it), in submission order."""
    plan: dict[str, tuple[str, list[str]]] = {}
    summary = TagSummary()
    for record in records:
        if record.untrained and not options.allow_untrained:
            raise UntrainedWeights(f"Job {record.job} was classified with untrained weights "
                                   f"({record.weights}): its labels are meaningless. Pass --allow-untrained "
                                   "to write them anyway.")
        if not record.ok:
            summary.skipped_errors += 1
            continue
        path = sidecar_path(record.path, options.sidecar_name)
        chosen = [] if options.remove else [keyword(t.label) for t in labels_above(record, options.min_score)]
        image, labels = plan.setdefault(path, (record.path, []))
        labels.extend(k for k in chosen[: options.top] if k not in labels)
        if not options.remove:
            labels.extend(k for k in head_keywords(record, options) if k not in labels)
    return plan, summary


def tag_sidecar(path: str, image: str, labels: list[str], options: TagOptions) -> SidecarChange:
    """Make imgq's keywords in the sidecar at ``path`` exactly ``labels`` (none: remove them)."""
    target = os.path.realpath(path)  # a symlinked sidecar is edited where it lives, and stays a symlink
    try:
        with open(target, "rb") as file:
            data, seen = file.read(), os.fstat(file.fileno())
    except FileNotFoundError:
        data, seen = None, None
    except OSError as exc:
        return SidecarChange(path, "failed", message=f"cannot read {path}: {exc.strerror or exc}")
    try:
        if data is None:
            if not labels:
                return SidecarChange(path, "unchanged")
            if not os.path.exists(image):
                return SidecarChange(path, "missing-image", message=f"no image at {image}; no sidecar written")
            add = wanted_keywords(labels, options.prefix)
            return _write(path, target, None, sidecars.new_sidecar(add), "created", add, {}, options)
        packet = sidecars.parse(data)
        remove, add = keyword_changes(packet, labels, options.prefix)
        if not any(remove.values()) and not any(add.values()):
            return SidecarChange(path, "unchanged")
        edited = sidecars.edit(packet, remove, add)
        if edited == sidecars.NEW_SIDECAR:  # one imgq created, now holding nothing: it goes, as it came
            if not options.dry_run:
                _check_unchanged(target, seen)
                os.unlink(target)
            return SidecarChange(path, "deleted", removed=tuple(sorted(remove.get(SUBJECT, []))))
        return _write(path, target, seen, edited, "changed", add, remove, options)
    except SidecarError as exc:
        return SidecarChange(path, "failed", message=f"cannot edit {path}: {exc}")
    except OSError as exc:
        return SidecarChange(path, "failed", message=f"cannot write {path}: {exc.strerror or exc}")


def _write(path: str, target: str, seen: os.stat_result | None, data: bytes, state: str, add: dict, remove: dict,
           options: TagOptions) -> SidecarChange:
    if not options.dry_run:
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as file:
                file.write(data)
            if seen is not None:
                os.chmod(tmp, seen.st_mode & 0o7777)  # the sidecar keeps its permissions
            _check_unchanged(target, seen)
    return SidecarChange(path, state, added=tuple(add.get(SUBJECT, [])), removed=tuple(sorted(remove.get(SUBJECT, []))))


def _check_unchanged(target: str, seen: os.stat_result | None) -> None:
    """Raises SidecarError when another program wrote the sidecar since imgq read it (its edit would be lost)."""
    try:
        now = os.stat(target)
    except FileNotFoundError:
        now = None
    versions = [None if s is None else (s.st_mtime_ns, s.st_size) for s in (seen, now)]
    if versions[0] != versions[1]:
        raise SidecarError("it changed while imgq was editing it; left as the other program wrote it")


def wanted_keywords(labels: list[str], prefix: str) -> dict[Field, list[str]]:
    """The values imgq writes for these labels, field by field."""
    return {SUBJECT: list(labels), HIERARCHICAL: [f"{prefix}|{label}" for label in labels],
            TAGS_LIST: [f"{prefix}/{label}" for label in labels]}


def keyword_changes(packet: sidecars.Packet, labels: list[str], prefix: str) -> tuple[dict, dict]:
    """(remove, add) per field that make imgq's keywords in the packet exactly ``labels``."""
    wanted = wanted_keywords(labels, prefix)
    current = {f: packet.keywords(f) for f in (SUBJECT, HIERARCHICAL, TAGS_LIST)}
    ours = {f: {k for k in current[f] if k.startswith(prefix + (f.separator or ""))} for f in (HIERARCHICAL, TAGS_LIST)}
    remove = {f: ours[f] - set(wanted[f]) for f in ours}
    theirs = {_leaf(k) for f in ours for k in current[f] if k not in ours[f]}
    old_labels = {_leaf(k) for f in ours for k in ours[f]}
    remove[SUBJECT] = {k for k in current[SUBJECT] if k in old_labels and k not in labels and k not in theirs}
    add = {f: [k for k in wanted[f] if k not in current[f]] for f in wanted}
    return remove, add


def _leaf(value: str) -> str:
    return value.replace("/", "|").rsplit("|", 1)[-1]
