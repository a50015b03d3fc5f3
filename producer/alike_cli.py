"""`imgq duplicates` and `imgq similar`: photos alike, from the per-batch embedding files of jobs submitted with
``--embeddings``. Commands, and `similar --to`'s one-image job queued and waited for; the work is in imgq.alike
(collections, search, hashes, pairs, groups) and producer.alike (calibration, rows); numpy, Pillow and faiss
imported on use."""

from __future__ import annotations

import os

import click

from imgq.contract import is_untrained
from imgq.jobs.refs import resolve
from imgq.results.store import JobNotFound, ResultStore
from producer.alike.find import Asked
from producer.options.params import BoundedInt, FiniteFloat
from producer.options.paths import ImageLocation, OutputFile
from producer.options.words import plural

MAX_SAMPLE = 10_000
MAX_K = 10_000
MAX_TIMEOUT = 7 * 86400


def _rows(ctx, jobs: tuple[str, ...], schedule: str | None = None):
    """The jobs (and a schedule's) resolved and their embedding rows; one line and exit 1 for what cannot be
    compared. A schedule's file classified again by a later tick keeps only its newest row."""
    from imgq.alike.batchfile import BatchFileError
    from producer.alike.report import AlikeError, gather

    ids = _job_ids(ctx, jobs, schedule)
    try:
        return ids, gather(ctx.obj.effective_dump_root, ids, newest_only=schedule is not None)
    except (AlikeError, BatchFileError) as exc:
        raise click.ClickException(str(exc)) from None


def _job_ids(ctx, jobs: tuple[str, ...], schedule: str | None) -> list[str]:
    """JOB... resolved, then the jobs of ``schedule`` that kept embeddings (oldest first); one line when a
    schedule has none."""
    from imgq.alike.batchfile import batch_files

    ids = [_job_id(ctx, job) for job in jobs]
    if schedule is not None:
        from imgq.schedules.schedule import ScheduleBook, ScheduleNotFound

        settings = ctx.obj
        try:
            ran = ScheduleBook(ResultStore.from_settings(settings), settings).jobs(schedule)
        except ScheduleNotFound as exc:
            raise click.ClickException(str(exc)) from None
        kept = [job for job in ran if batch_files(settings.effective_dump_root, job)]
        if not kept:
            raise click.ClickException(f"Schedule {schedule}'s jobs ({len(ran)}) have no embedding files: add it with "
                                       f"--embeddings (`imgq schedule add --replace {schedule} ... --embeddings`).")
        ids += kept
    if not ids:
        raise click.UsageError("Give a JOB or --schedule NAME.")
    return list(dict.fromkeys(ids))


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


schedule_option = click.option("--schedule", metavar="NAME",
                               help="Also search the jobs of this schedule's recent runs (the last 100) as one "
                                    "collection (`imgq schedule add --embeddings`).")


@click.command()
@click.argument("jobs", nargs=-1, metavar="[JOB...]")
@schedule_option
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
def duplicates(ctx, jobs, schedule, fmt, out, target, sample, max_distance, confirm, moment):
    """Group the photos of the jobs given (JOB arguments, a --schedule's jobs) that are alike, in three tiers:
    identical (same content hash), same picture (perceptual hash within a threshold calibrated on the job's own
    photos) and same moment (embeddings close; trained weights only). See docs/duplicates.md."""
    from producer.alike.find import find
    from producer.alike.report import AlikeError

    ids, rows = _rows(ctx, jobs, schedule)
    asked = Asked(target=target, sample=sample, max_distance=max_distance, confirm=confirm, moment=moment)
    close = _close_pairs(ctx, ids, rows, moments=not is_untrained(rows.vectors.weights))
    try:
        found = find(rows, ctx.obj, asked, say=lambda line: click.echo(line, err=True), close=close)
    except AlikeError as exc:
        raise click.ClickException(str(exc)) from None
    _write(found.members, out, fmt)
    click.echo(f"{plural(found.groups, 'group')} of {plural(len(found.members), 'photo')} among {len(rows.job)}.",
               err=True)


def _close_pairs(ctx, ids: list[str], rows, moments: bool):
    """How same moments are found: exact search, or the collection's index above PAIRS_APPROXIMATE_ABOVE rows
    (said on stderr)."""
    from imgq.alike import search
    from imgq.alike.batchfile import BatchFileError
    from imgq.alike.collection import CollectionError, open_collection
    from imgq.alike.pairs import cosine_pairs
    from producer.alike.report import indexed_pairs

    if not moments or len(rows.job) <= search.PAIRS_APPROXIMATE_ABOVE:
        return cosine_pairs
    try:
        collection = open_collection(ctx.obj.effective_dump_root, ids, ctx.obj.state_dir)
    except (CollectionError, BatchFileError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{plural(len(rows.job), 'photo')}: same moments are found by the approximate index "
               f"({search.index_file(collection)}; docs/duplicates.md).", err=True)
    close = indexed_pairs(rows, collection)

    def reported(vectors, above):
        try:
            yield from close(vectors, above)
        except (search.IndexUnavailable, BatchFileError) as exc:  # a file written again while it was searched
            raise click.ClickException(str(exc)) from None
    return reported


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
@click.argument("job", required=False)
@click.argument("image", type=BoundedInt(0, 2**40), required=False)
@click.option("--to", "to", type=ImageLocation(), metavar="PATH",
              help="A new photo instead of IMAGE: classified first by a worker of the jobs' model and weights (it "
                   "must be alive), then its embedding compared.")
@schedule_option
@click.option("-k", "k", type=BoundedInt(1, MAX_K), default=10, show_default=True, help="How many photos.")
@click.option("--timeout", type=FiniteFloat(0, MAX_TIMEOUT, low_open=True), default=600, show_default=True,
              metavar="SECONDS", help="With --to: give up waiting for the photo's classification after this long.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.pass_context
def similar(ctx, job, image, to, schedule, k, timeout, as_json):
    """The K photos most similar by embedding (cosine) to image IMAGE of JOB, or to a new photo (--to PATH), among
    JOB's and a --schedule's. Exact search up to a million photos, an approximate index above (docs/duplicates.md)."""
    from imgq.alike.batchfile import BatchFileError
    from imgq.alike.collection import CollectionError, open_collection
    from imgq.alike.search import IndexUnavailable, top_k

    if (image is None) == (to is None):
        raise click.UsageError("Give exactly one of IMAGE (with its JOB) and --to PATH.")
    if to is not None and os.path.isdir(to):
        raise click.BadParameter(f"{to} is a folder: give one photo.", param_hint="'--to'")
    jobs = (job,) if job is not None else ()
    ids = _job_ids(ctx, jobs, schedule)
    try:
        collection = open_collection(ctx.obj.effective_dump_root, ids, ctx.obj.state_dir)
        if to is None:
            row, query = _image_row(collection, ids[0], image)
        else:
            row, query = None, _new_photo(ctx, collection, to, timeout)
        _say_if_building(collection)
        stale = collection.superseded().tolist() if schedule else []
        found = top_k(collection, query, k, exclude=stale + ([row] if row is not None else []))
        hits = collection.locate(found.rows)
    except (CollectionError, BatchFileError, IndexUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    if is_untrained(collection.weights):
        click.echo(f"Weights {collection.weights} are random: these similarities say little (docs/duplicates.md).",
                   err=True)
    _print_hits(hits, found.scores, as_json, len(collection.jobs) > 1)


def _say_if_building(collection) -> None:
    """A line on stderr before the approximate index is built (minutes for millions of photos, once)."""
    from imgq.alike import search

    if len(collection) > search.APPROXIMATE_ABOVE and not os.path.exists(search.index_file(collection)):
        click.echo(f"Building the approximate index of {plural(len(collection), 'photo')}, once: "
                   f"{search.index_file(collection)}", err=True)


def _image_row(collection, job: str, image: int):
    found = collection.find(job, image)
    if found is None:
        raise click.ClickException(f"Image {image} of job {job} has no embedding (an error, or not in the job).")
    return found


def _print_hits(hits: list[tuple[str, int, str]], scores: list[float], as_json: bool, several: bool) -> None:
    import json

    for (job, image, path), score in zip(hits, scores, strict=True):
        entry = {"job": job, "image": image, "path": path, "similarity": round(score, 4)}
        if as_json:
            click.echo(json.dumps(entry if several else {k: v for k, v in entry.items() if k != "job"},
                                  ensure_ascii=False))
        else:
            where = f"{entry['job']}  " if several else ""
            click.echo(f"{entry['similarity']:.4f}  {where}{entry['image']:>6}  {entry['path']}")


def _new_photo(ctx, collection, path: str, timeout: float):
    """The embedding of the photo at ``path``, classified by a live worker of the collection's model and weights
    as a job of one image kept with --embeddings; one line and exit 1 when no such worker is alive, when it
    cannot classify the photo, or when what it kept is of other weights."""
    from imgq.contract import weights_key_of
    from imgq.jobs import submit as submission
    from imgq.jobs.queue import check_broker
    from imgq.storage.locate import source_for
    from producer.local.progress import wait
    from producer.options.model_choice import choose_model

    settings = ctx.obj
    store = ResultStore.from_settings(settings)
    key = weights_key_of(collection.weights)
    if not store.serving(collection.model, key):
        raise click.ClickException(
            f"No live worker serves model {collection.model} with weights {key}, which made these embeddings: start "
            f"one (`imgq worker --model {collection.model} --weights ...`) to classify {path}.")
    check_broker(settings)
    chosen = choose_model(collection.model, store)
    submitted = submission.submit([source_for(path).absolute(path)], settings=settings, store=store,
                                  name="similar-to", model=chosen.name, params=chosen.params(), weights=key,
                                  embeddings=True)
    try:
        wait(store, submitted.job, show=False, timeout=timeout)
    except TimeoutError:
        raise click.ClickException(f"{path} was not classified within {timeout:g} s: job {submitted.job} goes on "
                                   f"(`imgq wait {submitted.job}`).") from None
    return _embedding_of(settings, store, collection, submitted.job, path)


def _embedding_of(settings, store, collection, job: str, path: str):
    from imgq.alike.collection import CollectionError, open_collection

    record = store.record(job, 0)
    if record is None or not record.ok:
        why = f"{record.error.code}: {record.error.message}" if record and record.error else "no record"
        raise click.ClickException(f"{path} could not be classified ({why}).")
    try:
        mine = open_collection(settings.effective_dump_root, [job])
    except CollectionError:
        raise click.ClickException(f"The worker kept no embedding of {path} (job {job}): is its dump root "
                                   f"({settings.effective_dump_root}) shared with this machine?") from None
    if (mine.model, mine.weights, mine.features) != (collection.model, collection.weights, collection.features):
        raise click.ClickException(f"Embeddings of different models or weights never meet: {path} was classified "
                                   f"with {mine.model} and {mine.weights}, the jobs have {collection.model} and "
                                   f"{collection.weights}.")
    found = mine.find(job, 0)
    assert found is not None  # a collection of one image's job: its row
    return found[1]
