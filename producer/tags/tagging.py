"""Labels of result records as keywords in the images' XMP sidecars (`imgq tag`, and `imgq classify --tag`).

Which keywords: the chosen labels of each record (its first ``top`` labels scoring at least ``min_score``), each
as a path through its WordNet groups (imgq.labels.groups): ``imgq|animal|dog|Border collie`` in lr:hierarchicalSubject,
``imgq/animal/dog/Border collie`` in digiKam:TagsList, ``Border collie`` in dc:subject (and, with ``groups``,
``animal`` and ``dog`` too). With ``min_score`` above 0, a group whose score (the sum of its classes' scores)
reaches it is a keyword even when none of its classes is: ``imgq|animal|dog`` for a photo split between terriers.

Which keywords are imgq's: those under the prefix in the two hierarchical fields, and the dc:subject keywords
imgq recorded as added by it (sidecars.ADDED): a plain keyword the sidecar held before imgq came stays the
user's, even when it equals a label. Tagging makes imgq's keywords exactly the chosen ones (adding the missing,
taking away those no longer chosen), so a second run changes nothing; removing takes away all of imgq's and
nothing else. A dc:subject keyword that is also the leaf of someone else's hierarchical keyword stays.

Files: a sidecar is read only when it is a regular file (never through a symbolic link, never a pipe or a
device, at most SIDECAR_MAX_BYTES) and written atomically, keeping its owner and mode; a read-only one is
reported and left alone. An image is only looked at (stat): one changed since its job was submitted is skipped
with a line, since its record describes the picture that was there then.

Objects (s3://): their sidecars are KEY.xmp objects beside them, written only when asked (``TagOptions.objects``:
objects.py); otherwise skipped with a line each, or the whole run refused before anything is written.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from imgq.contract import ResultRecord
from imgq.labels import groups as wordnet_groups
from imgq.storage.files import RefusedFile, atomic_path, read_regular
from imgq.storage.roots import is_url
from producer.exports.export import labels_above
from producer.options.words import plural
from producer.tags import objects, sidecars
from producer.tags.keywords import (
    DUPLICATE,
    SIDECAR_MAX_BYTES,
    SIDECAR_NAMES,
    KeywordPath,
    SidecarChange,
    TagOptions,
    keyword_changes,
    shown,
    wanted_keywords,
)
from producer.tags.sidecars import ADDED, HIERARCHICAL, SUBJECT, TAGS_LIST, SidecarError

__all__ = ["SIDECAR_MAX_BYTES", "SIDECAR_NAMES", "SidecarChange", "TagOptions", "ObjectsNotAsked",
    "UntrainedWeights", "chosen_paths",
           "tag_records"]

class UntrainedWeights(ValueError):
    """The records were made with untrained (random) weights: their labels are meaningless."""


class ObjectsNotAsked(ValueError):
    """Records of objects in a store, with ``TagOptions.objects`` ``refuse``: nothing was written (one line)."""


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
    """IMG_1.jpg.xmp (full) or IMG_1.xmp (stem); an existing sidecar whose extension is .XMP is used as it is (a
    symbolic link counts as existing: it is refused when read, never looked through)."""
    base = image if naming == "full" else os.path.splitext(image)[0]
    path = base + ".xmp"
    return base + ".XMP" if not os.path.lexists(path) and os.path.lexists(base + ".XMP") else path


def tag_records(records: Iterable[ResultRecord], options: TagOptions,
                on_change: Callable[[SidecarChange], None] | None = None,
                submitted_at: float | None = None, members: Mapping[tuple[str, int], bool] | None = None
                ) -> TagSummary:
    """Write (or, with ``options.remove``, take away) the keywords of every ok record into its image's sidecar.

    Every record is read before any file is written, so UntrainedWeights (raised when a record was made with
    random weights, unless ``options.allow_untrained`` or ``options.remove``) and ObjectsNotAsked (records of
    s3:// objects with ``options.objects`` ``refuse``) leave every sidecar as it was. With ``objects`` ``write``,
    an object's sidecar is the object KEY.xmp beside it (objects.py).
    Images that share a sidecar (IMG_1.jpg and IMG_1.cr2 with ``stem``) get the union of their keywords.
    ``submitted_at``: when the records' job was submitted (epoch seconds); an image modified (or replaced)
    since is skipped, not tagged.
    ``on_change`` is called with each sidecar's change as it is made. A sidecar that cannot be read or parsed
    is reported in the summary as failed and left untouched.
    ``members``: with ``options.duplicates``, each photo of a group of photos alike, ``(job, image)`` -> whether
    it is its group's keeper (producer/alike/find.py): a sidecar of a photo that is not gets the DUPLICATE
    keyword, unless it is also the sidecar of a keeper (IMG_1.jpg and IMG_1.cr2 with ``stem``)."""
    plan, summary = plan_sidecars(records, options, submitted_at, members or {})
    if on_change:
        for change in summary.changes:
            on_change(change)
    for path, (image, paths) in plan.items():
        change = objects.tag_object(path, paths, options) if is_url(path) else tag_sidecar(path, image, paths, options)
        summary.changes.append(change)
        if on_change:
            on_change(change)
    return summary


def plan_sidecars(records: Iterable[ResultRecord], options: TagOptions, submitted_at: float | None = None,
                  members: Mapping[tuple[str, int], bool] | None = None
                  ) -> tuple[dict[str, tuple[str, list[KeywordPath]]], TagSummary]:
    """Sidecar path -> (one of its images, the keyword paths chosen for it), in submission order; the summary
    holds the images skipped (changed since ``submitted_at``, or gone). ``members``: see tag_records."""
    plan: dict[str, tuple[str, list[KeywordPath]]] = {}
    roles: dict[str, set[bool]] = {}  # sidecar -> whether its photos alike are keepers (True) or not (False)
    summary = TagSummary()
    objects_seen = 0
    for record in records:
        if (record.untrained and options.labels and not options.allow_untrained
                and not options.remove):  # removing is always allowed; marks are no labels
            raise UntrainedWeights(f"Job {record.job} was classified with untrained weights "
                                   f"({record.weights}): its labels are meaningless. Pass --allow-untrained "
                                   "to write them anyway.")
        if not record.ok:
            summary.skipped_errors += 1
            continue
        is_object = is_url(record.path)  # s3://: no folder beside it here; a relative "s3:/..." must not be made
        if is_object and options.objects != "write":
            objects_seen += 1
            summary.changes.append(SidecarChange(record.path, "skipped", message=f"{record.path} is an object in a "
                                                 "store: imgq tag writes sidecars beside local files only"))
            continue
        path = (objects.sidecar_url if is_object else sidecar_path)(record.path, options.sidecar_name)
        if not options.remove:
            skipped = (objects.changed_object if is_object else _changed_image)(path, record, submitted_at)
            if skipped is not None:
                summary.changes.append(skipped)
                continue
        chosen = [] if options.remove or not options.labels else chosen_paths(record, options)
        image, paths = plan.setdefault(path, (record.path, []))
        paths.extend(p for p in chosen if p not in paths)
        if (record.job, record.image) in (members or {}):
            roles.setdefault(path, set()).add((members or {})[record.job, record.image])
    if objects_seen and options.objects == "refuse":
        raise ObjectsNotAsked(f"{plural(objects_seen, 'image')} of this job {'is' if objects_seen == 1 else 'are'} "
                              "in object storage (s3://): imgq tag writes KEY.xmp objects beside them only with "
                              "--write-objects; nothing was written.")
    if options.duplicates and not options.remove:
        for path, seen in roles.items():
            if seen == {False}:  # a photo alike that is not its group's keeper, and no keeper shares its sidecar
                plan[path][1].append(DUPLICATE)
    return {path: (image, _without_ancestors(paths)) for path, (image, paths) in plan.items()}, summary


def chosen_paths(record: ResultRecord, options: TagOptions) -> list[KeywordPath]:
    """The keyword paths of a record: its first ``top`` labels scoring at least ``min_score``, each through its
    groups; with ``min_score`` above 0, also each group whose summed score reaches it (see imgq.labels.groups)."""
    paths = [_label_path(t.wnid, keyword(t.label)) for t in labels_above(record, options.min_score)[: options.top]]
    if options.min_score > 0:
        paths += [wordnet_groups.group_path(group) for group, score in wordnet_groups.scores(record.top_k).items()
                  if score >= options.min_score]
    head = str((record.head or {}).get("name", ""))
    paths += [(head, label) for label in head_keywords(record, options)]  # imgq|beach|not-beach
    return _without_ancestors(paths)


def _label_path(wnid: str, leaf: str) -> KeywordPath:
    above = wordnet_groups.path_of(wnid)
    return above if above and above[-1] == leaf else (*above, leaf)


def _without_ancestors(paths: list[KeywordPath]) -> list[KeywordPath]:
    """``paths`` without repeats and without those that lead to another (animal|dog goes when animal|dog|pug is
    there: the longer path says it, as Lightroom writes keywords)."""
    unique = list(dict.fromkeys(paths))
    return [p for p in unique if not any(len(q) > len(p) and q[: len(p)] == p for q in unique)]


def _changed_image(sidecar: str, record: ResultRecord, submitted_at: float | None) -> SidecarChange | None:
    """A skip when the file at the record's path is gone, or was modified or replaced since the job was
    submitted: its labels describe the picture that was there then.

    Records carry no size, time or content hash of the file they describe, so the job's submission time is
    the reference: a file whose modification time or inode change time (a write, a rename onto the path, a
    copy, but also a chmod or a new hard link) is later is skipped; a false alarm costs a line, never a wrong
    keyword."""
    try:
        info = os.stat(record.path)
    except FileNotFoundError:
        return SidecarChange(sidecar, "missing-image", message=f"no image at {record.path} any more; its sidecar "
                                                                "was left alone")
    except OSError as exc:
        return SidecarChange(sidecar, "missing-image", message=f"cannot look at {record.path}: "
                                                                f"{exc.strerror or exc}; its sidecar was left alone")
    changed = max(info.st_mtime, info.st_ctime)
    if submitted_at is None or changed <= submitted_at:
        return None
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(changed))
    return SidecarChange(sidecar, "skipped", message=f"{record.path} changed at {when}, after job {record.job} "
                                                      "was submitted: not tagged (classify it again to tag it)")


def tag_sidecar(path: str, image: str, paths: list[KeywordPath], options: TagOptions) -> SidecarChange:
    """Make imgq's keywords in the sidecar at ``path`` exactly those of ``paths`` (none: remove them)."""
    try:
        found = read_regular(path, SIDECAR_MAX_BYTES)
    except RefusedFile as exc:
        return SidecarChange(path, "failed", message=f"cannot edit {path}: {exc}; left as it is")
    except OSError as exc:
        return SidecarChange(path, "failed", message=f"cannot read {path}: {exc.strerror or exc}")
    try:
        if found is None:
            if not paths:
                return SidecarChange(path, "unchanged")
            if not os.path.exists(image):
                return SidecarChange(path, "missing-image", message=f"no image at {image}; no sidecar written")
            add = wanted_keywords(paths, options.prefix, options.groups)
            add[ADDED] = list(add[SUBJECT])
            if not options.dry_run:
                _replace(path, None, sidecars.new_sidecar(add))
            return SidecarChange(path, "created", added=shown(add))
        data, seen = found
        packet = sidecars.parse(data)
        remove, add = keyword_changes(packet, paths, options)
        if not any(remove.get(f) or add.get(f) for f in (SUBJECT, HIERARCHICAL, TAGS_LIST)):
            return SidecarChange(path, "unchanged")
        removed = tuple(sorted(remove[SUBJECT] or remove[HIERARCHICAL]))
        if _read_only(path, seen):
            return SidecarChange(path, "skipped", added=shown(add), removed=removed,
                                 message=f"{path} is read-only: not rewritten (make it writable to tag it)")
        edited = sidecars.edit(packet, remove, add)
        split = _hard_links(path, seen, options.dry_run)
        if edited == sidecars.NEW_SIDECAR:  # one imgq created, now holding nothing: it goes, as it came
            if not options.dry_run:
                _check_unchanged(path, seen)
                os.unlink(path)  # never a link: read_regular refused those
            return SidecarChange(path, "deleted", removed=removed, note=split)
        if not options.dry_run:
            _replace(path, seen, edited)
        return SidecarChange(path, "changed", added=shown(add), removed=removed, note=split)
    except SidecarError as exc:
        return SidecarChange(path, "failed", message=f"cannot edit {path}: {exc}")
    except OSError as exc:
        return SidecarChange(path, "failed", message=f"cannot write {path}: {exc.strerror or exc}")


def _read_only(path: str, seen: os.stat_result) -> bool:
    """No write permission bit at all (which root ignores, so the bits are read too), or none for this user."""
    return not seen.st_mode & 0o222 or not os.access(path, os.W_OK)


def _hard_links(path: str, seen: os.stat_result, dry_run: bool) -> str:
    """The note for a sidecar with other names: an atomic rewrite gives this name a file of its own."""
    if seen.st_nlink < 2:
        return ""
    others = seen.st_nlink - 1
    verb = "would keep" if dry_run else "keep"
    return (f"{path} had {others} other hard link{'s' if others > 1 else ''}: it is now a file of its own, "
            f"and the other name{'s' if others > 1 else ''} {verb} the old keywords")


def _replace(path: str, seen: os.stat_result | None, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, with the owner and mode ``seen`` had. Raises SidecarError when the
    owner cannot be kept or the file changed meanwhile (left as it was), OSError when it cannot be written."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as file:
            file.write(data)
        if seen is not None:
            mine = os.stat(tmp)
            if (mine.st_uid, mine.st_gid) != (seen.st_uid, seen.st_gid):
                try:
                    os.chown(tmp, seen.st_uid, seen.st_gid)
                except PermissionError:
                    raise SidecarError(f"it belongs to user {seen.st_uid} (group {seen.st_gid}), which imgq, "
                                       f"running as user {os.geteuid()}, cannot give a rewritten file; "
                                       "left as it was") from None
            os.chmod(tmp, stat.S_IMODE(seen.st_mode))  # after chown, which clears set-id bits
        _check_unchanged(path, seen)


def _check_unchanged(path: str, seen: os.stat_result | None) -> None:
    """Raises SidecarError when another program wrote the sidecar since imgq read it (its edit would be lost)."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        now = None
    versions = [None if s is None else (s.st_dev, s.st_ino, s.st_mtime_ns, s.st_size) for s in (seen, now)]
    if versions[0] != versions[1]:
        raise SidecarError("it changed while imgq was editing it; left as the other program wrote it")
