"""The keywords imgq writes into an XMP sidecar, whatever holds it (a file beside an image: tagging.py; an object
beside an object: objects.py): the options of `imgq tag`, what a sidecar's change is, and the per-field edits that
make imgq's keywords in a packet exactly the chosen ones (see tagging.py's docstring for which keywords are imgq's).
"""

from __future__ import annotations

from dataclasses import dataclass

from producer.tags import sidecars
from producer.tags.sidecars import ADDED, HIERARCHICAL, SUBJECT, TAGS_LIST, Field

SIDECAR_MAX_BYTES = 16 * 1024**2
# XMP sidecars are kilobytes (darktable's with a long edit history, a few hundred): 16 MiB is far above any
# real one, and bounds what a file named .xmp can make imgq read.

SIDECAR_NAMES = ("full", "stem")
OBJECT_CHOICES = ("skip", "refuse", "write")


@dataclass(frozen=True)
class TagOptions:
    """prefix: the parent keyword that marks imgq's keywords; top and min_score: which labels of a record become
    keywords (the first ``top`` whose score is at least ``min_score``); sidecar_name: ``full`` (IMG_1.jpg.xmp,
    digiKam and darktable) or ``stem`` (IMG_1.xmp, Lightroom and Capture One); remove: take imgq's keywords away
    instead; dry_run: change no file; allow_untrained: tag even records made with random weights; groups: the
    WordNet group words into dc:subject too (they are always in the hierarchical paths); objects: what becomes of
    the records of objects in a store (s3://): ``skip`` them with a line each (`imgq classify --tag`), ``refuse``
    the whole run before anything is written (`imgq tag` without --write-objects: ObjectsNotAsked), or ``write``
    KEY.xmp objects beside them (objects.py)."""

    prefix: str = "imgq"
    top: int = 1
    min_score: float = 0.0
    sidecar_name: str = "full"
    remove: bool = False
    dry_run: bool = False
    allow_untrained: bool = False
    groups: bool = False
    objects: str = "skip"
    labels: bool = True
    duplicates: bool = False

    def __post_init__(self):
        if not self.prefix or any(c in self.prefix for c in "|/") or self.prefix != self.prefix.strip():
            raise ValueError(f"Expected a prefix without '|', '/' or surrounding blanks. Received: {self.prefix!r}")
        if not 0.0 <= self.min_score <= 1.0:  # nan fails it too: nan would choose no label, so remove them all
            raise ValueError(f"Expected a minimum score between 0 and 1. Received: {self.min_score!r}")
        if self.sidecar_name not in SIDECAR_NAMES:
            raise ValueError(f"Expected a sidecar name in {SIDECAR_NAMES}. Received: {self.sidecar_name!r}")
        if self.objects not in OBJECT_CHOICES:
            raise ValueError(f"Expected objects in {OBJECT_CHOICES}. Received: {self.objects!r}")
        if not self.labels and not self.duplicates:
            raise ValueError("Expected labels, duplicates or both to tag. Received: neither")

    def manages(self, keyword: str, separator: str) -> bool:
        """Whether this run makes ``keyword`` (one of imgq's, a hierarchical value under the prefix) exactly
        what it chooses, adding or taking it away; a keyword it does not manage stays as it is. The duplicate
        mark (DUPLICATE) is managed by a run with ``duplicates`` and by every removal; the labels by a run with
        ``labels``: `imgq tag JOB` leaves the marks alone, `imgq tag JOB --duplicates --no-labels` the labels."""
        if keyword == self.prefix + separator + separator.join(DUPLICATE):
            return self.duplicates or self.remove
        return self.labels


@dataclass(frozen=True)
class SidecarChange:
    """What happened (or, in a dry run, would happen) to one sidecar: state is created, changed, deleted (a
    sidecar imgq created, emptied by a removal), unchanged, skipped (a read-only sidecar, an image changed since
    its job: message says which; nothing written), failed (message says why; the file was left alone) or
    missing-image (no sidecar written). ``note``: something the user should know about a change made (a hard
    link split)."""

    path: str
    state: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    message: str = ""
    note: str = ""


KeywordPath = tuple[str, ...]
# A keyword as a path under imgq's prefix, general first: ("animal", "dog", "Border collie").

DUPLICATE: KeywordPath = ("duplicate",)
# `imgq tag --duplicates`: on each photo of a group of photos alike that is not its keeper: imgq|duplicate in
# lr:hierarchicalSubject, imgq/duplicate in digiKam:TagsList, duplicate in dc:subject, as a label is written.


def wanted_keywords(paths: list[KeywordPath], prefix: str, groups: bool = False) -> dict[Field, list[str]]:
    """The values imgq writes for these keyword paths, field by field: each path's last word in dc:subject (all
    its words with ``groups``), the whole path under ``prefix`` in the two hierarchical fields."""
    subjects = list(dict.fromkeys(word for path in paths for word in (path if groups else path[-1:])))
    return {SUBJECT: subjects, HIERARCHICAL: [prefix + "|" + "|".join(path) for path in paths],
            TAGS_LIST: [prefix + "/" + "/".join(path) for path in paths]}


def keyword_changes(packet: sidecars.Packet, paths: list[KeywordPath], options: TagOptions
                    ) -> tuple[dict[Field, set[str]], dict[Field, list[str]]]:
    """(remove, add) per field that make imgq's keywords in the packet that ``options`` manage
    (TagOptions.manages) exactly those of ``paths``, and its record of the dc:subject keywords it added (ADDED)
    what it then holds of its own. imgq's keywords it does not manage, and their dc:subject words, stay."""
    prefix = options.prefix
    wanted = wanted_keywords(paths, prefix, options.groups)
    current = {f: packet.keywords(f) for f in (SUBJECT, HIERARCHICAL, TAGS_LIST, ADDED)}
    imgqs = {f: {k for k in current[f] if k.startswith(prefix + (f.separator or ""))}
             for f in (HIERARCHICAL, TAGS_LIST)}
    ours = {f: {k for k in imgqs[f] if options.manages(k, f.separator or "")} for f in imgqs}
    remove: dict[Field, set[str]] = {f: ours[f] - set(wanted[f]) for f in ours}
    theirs = {_leaf(k) for f in ours for k in current[f] if k not in imgqs[f]}
    kept = {_leaf(k) for f in ours for k in imgqs[f] - ours[f]}  # imgq's, not this run's to change
    added_before = current[ADDED]
    remove[SUBJECT] = {k for k in current[SUBJECT]
                       if k in added_before and k not in wanted[SUBJECT] and k not in theirs and k not in kept}
    add = {f: [k for k in wanted[f] if k not in current[f]] for f in wanted}
    still_ours = [k for k in added_before if k in current[SUBJECT] and k not in remove[SUBJECT] and k not in theirs]
    record = list(dict.fromkeys(still_ours + add[SUBJECT]))
    remove[ADDED] = set(added_before) - set(record)
    add[ADDED] = [k for k in record if k not in added_before]
    return remove, add


def _leaf(value: str) -> str:
    return value.replace("/", "|").rsplit("|", 1)[-1]


def shown(add: dict[Field, list[str]]) -> tuple[str, ...]:
    """What a change adds, as a person reads it: the plain keywords, or the paths when no plain one is new."""
    return tuple(add.get(SUBJECT) or add.get(HIERARCHICAL) or ())
