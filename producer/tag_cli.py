"""`imgq tag`: a job's labels as keywords in the images' XMP sidecars. Command only; the work is in
producer.tags.tagging (which keywords, which sidecar) and producer.tags.sidecars (the XMP edit)."""

from __future__ import annotations

import os

import click

from imgq.jobs.refs import resolve
from imgq.results.store import ResultStore
from producer.options.params import BoundedInt, FiniteFloat
from producer.options.words import echo, plural, printable
from producer.tags.tagging import (
    SIDECAR_NAMES,
    ObjectsNotAsked,
    SidecarChange,
    TagOptions,
    UntrainedWeights,
    tag_records,
)


@click.command()
@click.argument("job")
@click.option("--min-score", type=FiniteFloat(0, 1), default=0.0, show_default=True, metavar="S",
              help="Only labels scoring at least S become keywords; above 0, so does each WordNet group whose "
                   "summed score reaches S (dog 0.93 for a photo split between three terriers).")
@click.option("--top", type=BoundedInt(1, 1000), default=1, show_default=True, metavar="N",
              help="At most the N best labels of each image become keywords.")
@click.option("--prefix", default="imgq", show_default=True, metavar="TEXT",
              help="Parent keyword of imgq's keywords (TEXT|label, TEXT/label): what --remove goes by.")
@click.option("--sidecar-name", type=click.Choice(SIDECAR_NAMES), default="full", show_default=True,
              help="full: IMG_1.jpg.xmp (digiKam, darktable); stem: IMG_1.xmp (Lightroom, Capture One).")
@click.option("--remove", is_flag=True, help="Take away the keywords imgq wrote (under --prefix), and nothing else.")
@click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")
@click.option("--allow-untrained", is_flag=True,
              help="Write labels of a job classified with random (untrained) weights, meaningless as they are "
                   "(not needed with --remove, which writes none).")
@click.option("--groups", is_flag=True,
              help="Also write the labels' WordNet groups (animal, dog, vehicle, ...) into dc:subject; they are "
                   "always in the hierarchical keywords (imgq|animal|dog|Border collie).")
@click.option("--write-objects", is_flag=True,
              help="For images in object storage (s3://), write their sidecars as KEY.xmp objects beside them "
                   "(PutObject; needs s3:GetObject and s3:PutObject). Without it, a job with such images is refused.")
@click.option("--duplicates", is_flag=True,
              help="Also mark the photos alike: PREFIX|duplicate on each photo of a group that is not its keeper, "
                   "the groups and keepers `imgq duplicates JOB` gives (a job submitted with --embeddings); nothing "
                   "is ever deleted or moved. With --remove: take the marks away.")
@click.option("--labels/--no-labels", default=True, show_default=True,
              help="--no-labels: with --duplicates, only the marks; the label keywords stay as they are.")
@click.pass_context
def tag(ctx, job, min_score, top, prefix, sidecar_name, remove, dry_run, allow_untrained, groups, write_objects,
        duplicates, labels):
    """Write JOB's labels as keywords into each image's XMP sidecar (dc:subject, lr:hierarchicalSubject,
    digiKam:TagsList), merging with what is there. The images themselves are never modified.

    Images in object storage (s3://) get KEY.xmp objects beside them, with --write-objects only.

    --duplicates marks the photos alike (docs/duplicates.md): PREFIX|duplicate on each photo that is not its
    group's keeper; a run without it leaves the marks as they are, and --no-labels leaves the labels.

    A second run adds nothing; after a new classification it replaces imgq's keywords with the new labels.
    A keyword the sidecar held before imgq came stays, even when it equals a label. Images changed since the
    job was submitted are skipped with a line; symbolic links, pipes and read-only sidecars are left alone.
    """
    if not labels and not duplicates:
        raise click.UsageError("--no-labels leaves nothing to tag: add --duplicates.")
    try:
        options = TagOptions(prefix=prefix, top=top, min_score=min_score, sidecar_name=sidecar_name,
                             remove=remove, dry_run=dry_run, allow_untrained=allow_untrained, groups=groups,
                             objects="write" if write_objects else "refuse", labels=labels, duplicates=duplicates)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--prefix") from None
    store = ResultStore.from_settings(ctx.obj)
    job = resolve(store, job)
    status = store.status(job)  # raises JobNotFound
    if not status.finished:
        echo(f"Job {job} is {status.state}: tagging the {status.processed} of {status.total} images "
             "that have records so far.", err=True)
    members = _photos_alike(ctx.obj, job, prefix) if duplicates and not remove else None  # removing needs none
    try:
        summary = tag_records(store.iter_records(job), options, on_change=_reporter(dry_run),
                              submitted_at=status.created, members=members)
    except (UntrainedWeights, ObjectsNotAsked) as exc:
        raise click.ClickException(str(exc)) from None
    would = "would be " if dry_run else ""
    counts = ", ".join(f"{summary.count(state)} {would}{state}" for state in ("created", "changed", "deleted"))
    echo(f"Sidecars: {counts}, {summary.count('unchanged')} unchanged, {summary.count('skipped')} skipped, "
         f"{len(summary.failed)} failed; "
         f"{plural(summary.skipped_errors, 'image')} without labels (errors) skipped.", err=True)
    if summary.failed:
        raise click.ClickException(f"{plural(len(summary.failed), 'sidecar')} could not be written (see above); "
                                   "they were left as they were.")


def _photos_alike(settings, job: str, prefix: str) -> dict[tuple[str, int], bool]:
    """Each photo of a group of photos alike of ``job`` -> whether it is its group's keeper, found as
    `imgq duplicates JOB` finds them (producer/alike/find.py, its defaults); what the calibration measured goes to
    standard error. One line and exit 1 for a job without embedding files or a threshold that cannot be had."""
    from imgq.alike.batchfile import BatchFileError
    from producer.alike.find import find
    from producer.alike.report import AlikeError, gather

    try:
        found = find(gather(settings.effective_dump_root, [job]), settings, say=lambda line: echo(line, err=True))
    except (AlikeError, BatchFileError) as exc:
        raise click.ClickException(str(exc)) from None
    echo(f"{plural(found.groups, 'group')} of photos alike: {prefix}|duplicate for "
         f"{plural(len(found.non_keepers()), 'photo')} (all but each group's keeper).", err=True)
    return {(m["job"], m["image"]): m["keeper"] for m in found.members}


def _reporter(dry_run: bool):
    def report(change: SidecarChange) -> None:
        if change.state in ("failed", "missing-image", "skipped"):
            echo(f"warning: {change.message}", err=True)
        if change.note:
            echo(f"note: {change.note}", err=True)
        elif change.state != "unchanged" and dry_run:
            parts = [f"+{k}" for k in change.added] + [f"-{k}" for k in change.removed]
            verb = {"created": "would create", "deleted": "would delete"}.get(change.state, "would change")
            # The path as its bytes: a file name need not be UTF-8, and stdout under a UTF-8 locale refuses it.
            click.echo(os.fsencode(printable(change.path)) + f": {verb}: {', '.join(parts)}".encode())
    return report
