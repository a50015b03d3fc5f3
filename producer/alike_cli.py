"""`imgq duplicates` and `imgq similar`: photos alike, from the per-batch embedding files of jobs submitted with
``--embeddings``. Commands only; the work is in imgq.alike (hashes, pairs, groups) and producer.alike
(calibration, rows); numpy and Pillow imported on use."""

from __future__ import annotations

import click

from imgq.contract import is_untrained
from imgq.jobs.refs import resolve
from imgq.results.store import JobNotFound, ResultStore
from producer.alike.find import Asked
from producer.options.params import BoundedInt, FiniteFloat
from producer.options.paths import OutputFile
from producer.options.words import plural

MAX_SAMPLE = 10_000
MAX_K = 10_000


def _rows(ctx, jobs: tuple[str, ...]):
    """The jobs resolved and their embedding rows; one line and exit 1 for what cannot be compared."""
    from imgq.alike.batchfile import BatchFileError
    from producer.alike.report import AlikeError, gather

    ids = list(dict.fromkeys(_job_id(ctx, job) for job in jobs))
    try:
        return ids, gather(ctx.obj.effective_dump_root, ids)
    except (AlikeError, BatchFileError) as exc:
        raise click.ClickException(str(exc)) from None


def _job_id(ctx, text: str) -> str:
    """The job JOB names (an id, a prefix or a name, in Redis); a job id whose embedding files are under the
    dump root needs no Redis: `imgq classify --embeddings` with a private server leaves only its files."""
    import redis

    from imgq.alike.batchfile import batch_files
    from imgq.contract import JOB_ID

    local = JOB_ID.fullmatch(text) and batch_files(ctx.obj.effective_dump_root, text)
    try:
        return resolve(ResultStore.from_settings(ctx.obj), text)
    except (JobNotFound, redis.ConnectionError, redis.TimeoutError):
        if local:
            return text
        raise


@click.command()
@click.argument("jobs", nargs=-1, required=True, metavar="JOB [JOB...]")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True,
              help="One line per member of a group: group, tier, job, image, path, similarity, keeper.")
@click.option("-o", "--output", "out", type=OutputFile(), help="File to write [default: standard output].")
@click.option("--false-match-rate", "target", type=FiniteFloat(0, 0.5, low_open=True), default=Asked.target,
              show_default=True,
              help="The share of pairs of distinct photos the same-picture threshold may match, as measured on the "
                   "jobs' photos.")
@click.option("--sample", type=BoundedInt(1, MAX_SAMPLE), default=Asked.sample, show_default=True,
              help="How many of the jobs' photos are altered in memory to calibrate the threshold.")
@click.option("--max-distance", type=BoundedInt(0, 64), default=None,
              help="Use this pHash distance (bits) for a same picture instead of calibrating one (0: equal hashes "
                   "only).")
@click.option("--confirm", type=FiniteFloat(-1, 1), default=Asked.confirm, show_default=True,
              help="Trained weights only: the least embedding cosine that confirms a same picture.")
@click.option("--moment", type=FiniteFloat(-1, 1), default=Asked.moment, show_default=True,
              help="Trained weights only: the least embedding cosine of a same moment (bursts, retakes).")
@click.pass_context
def duplicates(ctx, jobs, fmt, out, target, sample, max_distance, confirm, moment):
    """Group the photos of JOB... that are alike, in three tiers: identical (same content hash), same picture
    (perceptual hash within a threshold calibrated on the job's own photos) and same moment (embeddings close;
    trained weights only). See docs/duplicates.md."""
    from producer.alike.find import find
    from producer.alike.report import AlikeError

    _, rows = _rows(ctx, jobs)
    asked = Asked(target=target, sample=sample, max_distance=max_distance, confirm=confirm, moment=moment)
    try:
        found = find(rows, ctx.obj, asked, say=lambda line: click.echo(line, err=True))
    except AlikeError as exc:
        raise click.ClickException(str(exc)) from None
    _write(found.members, out, fmt)
    click.echo(f"{plural(found.groups, 'group')} of {plural(len(found.members), 'photo')} among {len(rows.job)}.",
               err=True)


def _write(members: list[dict], out: str | None, fmt: str) -> None:
    import csv
    import json

    from producer.alike.report import FIELDS
    from producer.exports.export import output

    with output(out) as file:
        if fmt == "csv":
            writer = csv.DictWriter(file, FIELDS)
            writer.writeheader()
            writer.writerows(members)
        else:
            for member in members:
                file.write(json.dumps(member, ensure_ascii=False) + "\n")


@click.command()
@click.argument("job")
@click.argument("image", type=BoundedInt(0, 2**40))
@click.option("-k", "k", type=BoundedInt(1, MAX_K), default=10, show_default=True, help="How many photos.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.pass_context
def similar(ctx, job, image, k, as_json):
    """The K photos of JOB most similar to its IMAGE (an image number) by embedding (cosine; exact search)."""
    import json

    import numpy as np

    from imgq.alike.pairs import top_k

    _, rows = _rows(ctx, (job,))
    v = rows.vectors
    found = np.nonzero(v.image == image)[0]
    if not len(found):
        raise click.ClickException(f"Image {image} of job {job} has no embedding (an error, or not in the job).")
    query = v.embedding[found[0]].astype(np.float32)
    if is_untrained(v.weights):
        click.echo(f"Weights {v.weights} are random: these similarities say little (docs/duplicates.md).", err=True)
    hits = [(r, s) for r, s in top_k(v.embedding, query, k + 1) if r != found[0]][:k]
    for row, score in hits:
        entry = {"image": int(v.image[row]), "path": str(v.path[row]), "similarity": round(score, 4)}
        click.echo(json.dumps(entry, ensure_ascii=False) if as_json else
                   f"{entry['similarity']:.4f}  {entry['image']:>6}  {entry['path']}")
