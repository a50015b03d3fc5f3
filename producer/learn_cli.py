"""`imgq learn`: fit a head of the user's labels from a folder of examples. Command only; the work is in
producer.learn (examples, features, the fit) and producer.local.classify (running the examples through a worker)."""

from __future__ import annotations

import os

import click

from imgq.labels.heads import HeadError, check_label
from imgq.settings import env_var
from producer.options.model_choice import WeightsOption, check_local_weights, choose_model
from producer.options.paths import ImageLocation, OutputFile
from producer.options.words import echo


@click.command()
@click.argument("examples", type=ImageLocation())
@click.option("-o", "--output", "out", type=OutputFile(), required=True, metavar="HEAD",
              help="The head file to write (JSON), e.g. beach.head.json.")
@click.option("--name", default="", help="The head's name in records and sidecars (default: HEAD's file name "
                                         "without .head.json).")
@click.option("--model", metavar="NAME|FOLDER",
              help="The base model whose pooled features the head reads (as `imgq classify --model`; the head is "
                   "tied to it) [default: resnet50].")
@click.option("--weights", metavar="WEIGHTS", type=WeightsOption(),
              help="The weights to learn on (the head is tied to them): a live worker with them, or one started "
                   f"here [env: {env_var('weights')}; default: imagenet].")
@click.option("--embedded-redis/--no-embedded-redis", default=None,
              help="Start a private Redis-compatible server (default: only when none is configured or answering).")
@click.pass_context
def learn(ctx, examples, out, name, model, weights, embedded_redis):
    """Learn a head of your own labels from EXAMPLES, one folder per label (EXAMPLES/beach/*.jpg,
    EXAMPLES/not-beach/*.jpg, ...; at least 5 images each). EXAMPLES may be an s3://bucket/prefix, each label a
    sub-prefix.

    The examples are classified on this machine as `imgq classify` does, a logistic regression is fitted on
    the model's pooled features (cross-validated accuracy and a confusion table printed) and written to HEAD.
    Apply it with `--head HEAD` on submit, classify and schedule add. Learning again with more examples is
    the same command.
    """
    from producer import learn as learning
    from producer.local.classify import Output, run_classify
    from producer.options.params import broker_configured, embedded_asked
    from producer.options.weights_choice import classify_weights

    try:
        found = learning.find_examples(examples)
    except learning.ExamplesError as exc:
        raise click.ClickException(str(exc)) from None
    name = name or _default_name(out)
    try:
        check_label(name)
    except HeadError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from None
    counts = {label: len(paths) for label, paths in found.images.items()}
    echo(f"Learning {len(counts)} labels from {sum(counts.values())} examples: "
         + ", ".join(f"{label} ({n})" for label, n in counts.items()), err=True)
    if found.skipped:
        echo(f"Skipped {len(found.skipped)} files that are not images, e.g. {found.skipped[0]}", err=True)

    settings = _with(ctx.obj, weights=weights, model=model)
    chosen = choose_model(settings.model)
    check_local_weights(chosen, settings.weights, option=weights is not None)
    if not chosen.feature_layer:
        raise click.ClickException(f"Model {chosen.name} names no pooled feature layer (feature_layer in its "
                                   "imgq-model.toml): a head reads that layer.")
    results = learning.temporary_results()
    try:
        final = run_classify([p for paths in found.images.values() for p in paths], settings,
                             name=f"learn-{name}", embedded=embedded_asked(ctx, embedded_redis),
                             broker_configured=broker_configured(ctx),
                             request={"activations": (chosen.feature_layer,), "activations_dtype": "float32",
                                      "model": chosen.name, "params": chosen.params(),
                                      "weights": classify_weights(settings.weights, chosen)},
                             output=Output(results, temporary=True))  # read below, then removed
        records = learning.read_learn_records(results)
    finally:
        os.unlink(results)
    try:
        features = learning.gather_features(records, found, settings.effective_dump_root, chosen.feature_layer)
    except learning.ExamplesError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        learning.forget_dumps(settings.effective_dump_root, final.id)
    for line in features.failed:
        echo(f"warning: not learned from {line}", err=True)
    try:
        head = learning.fit_head(features, name, counts)
    except learning.ExamplesError as exc:
        raise click.ClickException(str(exc)) from None
    learning.write_head(head, out)
    _report(head, out)


def _report(head, out: str) -> None:
    from producer.learn import confusion_table, untrained

    figures = head.figures
    echo(f"Cross-validated accuracy: {figures['cv_accuracy']:.3f} ({figures['cv_folds']} folds, "
         f"{figures['examples']} examples)", err=True)
    for line in confusion_table(head):
        echo("  " + line, err=True)
    echo(f"Head {head.name!r} written to {out}: {len(head.labels)} labels on {head.base_model} "
         f"({head.feature_layer}), weights {head.weights}.", err=True)
    if untrained(head):
        echo("WARNING: learned on the features of random weights: it tells apart only what untrained "
             "features can (colours, textures).", err=True)


def _default_name(out: str) -> str:
    base = os.path.basename(out)
    for suffix in (".head.json", ".json"):
        if base.endswith(suffix):
            return base[: -len(suffix)] or base
    return base


def _with(settings, **values):
    """``settings`` with the options given (None: the setting as it is)."""
    import dataclasses

    return dataclasses.replace(settings, **{k: v for k, v in values.items() if v is not None})
