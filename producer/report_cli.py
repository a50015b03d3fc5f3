"""`imgq layers`, `imgq report` and `imgq show`: what the convnet saw. Commands only; the work is in
imgq.models.layers, producer.report.page, producer.report.heatmaps and producer.exports.dumps (numpy and Pillow
imported on use)."""

from __future__ import annotations

import click

from imgq.jobs.refs import resolve
from imgq.results.store import ResultStore
from imgq.settings import env_var
from producer.exports.dumps import format_bytes
from producer.options.params import BoundedInt
from producer.options.paths import OutputFile
from producer.options.words import echo, plural

MAX_IMAGE = 2**40  # image numbers count from 0; no job comes near this, and Redis takes it as a list index
MAX_DUPLICATE_GROUPS = 100_000  # a page of 100,000 groups is megabytes of HTML; beyond, `imgq duplicates`
MAX_CHANNELS = 4096  # more than any built-in model's widest layer (ConvNeXt-Tiny's 3072)
UNFETCHED_LINES = 10  # images whose picture could not be fetched, told one line each; the rest counted


@click.command()
@click.option("--model", metavar="NAME",
              help=f"A built-in model's name [env: {env_var('model')}; default: resnet50]. A model folder's layers "
                   "are known to its worker only.")
@click.pass_context
def layers(ctx, model):
    """List a model's layers: output shape of one image and the bytes of its dump, float16 and float32."""
    from imgq.models.layers import dump_bytes, layer_shapes, shapes_known
    from producer.options.model_choice import choose_model

    chosen = choose_model(model or ctx.obj.model)
    if not shapes_known(chosen.name):
        raise click.ClickException(f"Model {chosen.name} is a model folder: its layers are known only to the worker "
                                   f"that loads it (Keras' model.summary() lists them); --activations takes its "
                                   f"names as given.")
    shapes = layer_shapes(chosen.name)
    width = max(24, *map(len, shapes))
    echo(f"{'LAYER':<{width}}  {'SHAPE':<14}  {'FLOAT16':>10}  {'FLOAT32':>10}")
    for name, shape in shapes.items():
        sizes = [format_bytes(dump_bytes((name,), dtype, chosen.name)) for dtype in ("float16", "float32")]
        echo(f"{name:<{width}}  {'x'.join(map(str, shape)):<14}  {sizes[0]:>10}  {sizes[1]:>10}")


@click.command()
@click.argument("job")
@click.option("-o", "--output", "out", type=OutputFile(),
              help="The HTML file; its pictures go to a folder beside it, <name>_files/ [default: imgq-<job>.html].")
@click.option("--page-size", type=BoundedInt(1, 10000), default=100, show_default=True,
              help="Images per page of the grid.")
@click.option("--channels", type=BoundedInt(1, 64), default=8, show_default=True,
              help="Most active channels shown per dumped layer and image.")
@click.option("--group", metavar="NAME",
              help="Only the images of this WordNet group (animal, dog, vehicle, ...): those whose group score, "
                   "the sum of its classes' scores, is at least 0.5.")
@click.option("--duplicate-groups", type=BoundedInt(0, MAX_DUPLICATE_GROUPS), default=50, show_default=True,
              metavar="N",
              help="At most N groups of photos alike in the duplicates section of a job submitted with "
                   "--embeddings, found as `imgq duplicates` finds them (0: no section).")
@click.pass_context
def report(ctx, job, out, page_size, channels, group, duplicate_groups):
    """Write an HTML report of JOB: summary, errors, duplicates (with --embeddings), thumbnails with labels,
    heat maps of the dumps."""
    from producer.report.page import ReportError, write_report
    from producer.report.previews import PreviewLimits

    store = ResultStore.from_settings(ctx.obj)
    job = resolve(store, job)
    out = out or f"imgq-{job}.html"
    try:
        written = write_report(store, job, out, ctx.obj.effective_dump_root,
                               page_size=page_size, channels=channels, group=group,
                               limits=PreviewLimits.from_settings(ctx.obj), duplicate_groups=duplicate_groups)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    for line in written.measured:
        echo(line, err=True)
    for line in written.unfetched[:UNFETCHED_LINES]:
        echo(f"No thumbnail of {line}", err=True)  # echo drops control characters: one line, whatever the name
    if len(written.unfetched) > UNFETCHED_LINES:
        echo(f"No thumbnail of {plural(len(written.unfetched) - UNFETCHED_LINES, 'more image')} (their cards say why).",
             err=True)
    echo(f"Wrote {written.path} ({plural(written.images, 'image')}, {plural(written.errors, 'error')}) and "
         f"{plural(written.thumbnails, 'thumbnail')} and {plural(written.heatmaps, 'heat-map grid')} to "
         f"{written.folder}/; {plural(written.duplicate_groups, 'group')} of photos alike.", err=True)


@click.command()
@click.argument("job")
@click.argument("image", type=BoundedInt(0, MAX_IMAGE))
@click.option("--layer", required=True, help="A layer dumped for the image (see the record's activations).")
@click.option("-o", "--output", "out", required=True, type=OutputFile(),
              help="The PNG file to write.")
@click.option("--channels", type=BoundedInt(0, MAX_CHANNELS), default=16, show_default=True,
              help="Most active channels shown (0: all).")
@click.option("--cell", type=BoundedInt(8, 1024), default=128, show_default=True,
              help="Longer side of each feature map, in pixels.")
@click.pass_context
def show(ctx, job, image, layer, out, channels, cell):
    """Draw the feature maps of LAYER for IMAGE (its number in JOB) as one PNG of heat maps."""
    from producer.exports.dumps import layer_of, record_of
    from producer.report.heatmaps import channel_title, feature_grid, write_png

    store = ResultStore.from_settings(ctx.obj)
    activations = layer_of(record_of(store, resolve(store, job), image), layer,
                           ctx.obj.effective_dump_root)
    write_png(feature_grid(activations, channels, cell=cell, labels=True), out)
    echo(f"Wrote {out}: {layer} {'x'.join(map(str, activations.shape))}, "
         f"{channel_title(activations, channels)}.", err=True)
