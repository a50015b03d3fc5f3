"""`imgq learn EXAMPLES -o HEAD`: a head of the user's own labels, fitted on the base model's pooled features.

EXAMPLES holds one folder per label. The examples are classified as `imgq classify` does (a worker started
when none is alive), dumping the model's feature layer (ResNet50: ``avg_pool``, 2048 values) as float32; a
logistic regression (scikit-learn: class-balanced, on standardised features) is cross-validated, then fitted
on every example and written as a head (imgq/labels/heads.py) with its figures. scikit-learn is imported here only.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone

from imgq.contract import ResultRecord, dump_path, is_untrained
from imgq.labels.heads import Head, HeadError, check_head, check_label
from imgq.storage.errors import ListingError
from imgq.storage.files import atomic_path
from imgq.storage.locate import destination_for, source_for
from imgq.storage.selection import PathFilter, Skipped
from imgq.storage.walk import iter_images

MIN_EXAMPLES = 5  # per label: fewer cannot be cross-validated in 5 folds, nor say much
MAX_FOLDS = 5
FEATURE_LAYER = "avg_pool"  # ResNet50's pooled features, what its classifier reads (other models: their spec's)


class ExamplesError(ValueError):
    """EXAMPLES cannot be learned from; one line saying which folder and what to do."""


@dataclass
class Examples:
    """The labels (folder names, sorted) and each label's image paths (sorted)."""

    root: str
    images: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # files in label folders that are not images

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.images)

    def label_of(self) -> dict[str, str]:
        return {path: label for label, paths in self.images.items() for path in paths}


def find_examples(root: str) -> Examples:
    """The examples under ``root`` (a folder, or an s3:// prefix): one folder (sub-prefix) per label, at least
    MIN_EXAMPLES images each, two labels or more. Hidden folders are not labels. Raises ExamplesError."""
    source = source_for(root)
    root = source.absolute(root)
    try:
        folders = source.folders(root)
    except ListingError as exc:
        raise ExamplesError(str(exc)) from None
    if not folders:
        raise ExamplesError(f"{root} has no label folders: make one folder per label, e.g. "
                            f"{_inside(root, 'beach')}/*.jpg and {_inside(root, 'not-beach')}/*.jpg.")
    examples = Examples(root)
    for folder in folders:
        label = folder.rsplit("/", 1)[-1]
        try:
            check_label(label)
        except HeadError as exc:
            raise ExamplesError(f"{folder}: the folder's name is the label, and it cannot be one: {exc}") from None
        skipped = Skipped(keep_paths=True)
        try:
            examples.images[label] = sorted(iter_images([folder], PathFilter(), skipped))
        except ListingError as exc:
            raise ExamplesError(str(exc)) from None
        examples.skipped += sorted(skipped.paths)
    _check_counts(examples)
    return examples


def _inside(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def _check_counts(examples: Examples) -> None:
    few = {label: len(paths) for label, paths in examples.images.items() if len(paths) < MIN_EXAMPLES}
    if few:
        label, n = next(iter(few.items()))
        more = f" (and {len(few) - 1} more folders)" if len(few) > 1 else ""
        raise ExamplesError(f"{_inside(examples.root, label)} has {n} images; a label needs at least "
                            f"{MIN_EXAMPLES}{more}.")
    if len(examples.images) < 2:
        raise ExamplesError(f"{examples.root} has one label folder; a head needs two or more (e.g. beach and "
                            f"not-beach).")


@dataclass(frozen=True)
class Features:
    """The feature rows of the examples that were classified, their labels, and what made them."""

    rows: list  # numpy arrays of the feature layer
    labels: list[str]
    model: str
    weights: str
    failed: list[str]  # "path: code (message)" of the examples the workers could not classify
    layer: str = FEATURE_LAYER  # the model's pooled layer the rows are


def gather_features(records: list[ResultRecord], examples: Examples, dump_root: str,
                    layer: str = FEATURE_LAYER) -> Features:
    """The feature rows of ``records`` (a learn job's, dumping FEATURE_LAYER). An example whose record is an
    error, or whose features are not finite numbers, is left out (listed in ``failed``). Raises ExamplesError
    when the records come from several weights, or too few examples of a label could be classified."""
    import numpy as np

    from producer.exports.dumps import dump_file, load_layer

    label_of = examples.label_of()
    rows, labels, failed = [], [], []
    for record in records:
        file = dump_file(record, dump_root) if record.ok else None
        if file is None:
            reason = record.error.code + f" ({record.error.message})" if record.error else "no feature dump"
            failed.append(f"{record.path}: {reason}")
            continue
        row = load_layer(file, layer).reshape(-1)
        if not np.isfinite(row).all():
            failed.append(f"{record.path}: its features are not finite numbers (NaN or infinite)")
            continue
        rows.append(row)
        labels.append(label_of[record.path])
    weights = {r.weights for r in records if r.ok}
    if len(weights) > 1:
        raise ExamplesError(f"The examples were classified by workers with different weights ({', '.join(weights)}): "
                            f"run one kind of worker, then learn again.")
    _check_counts(Examples(examples.root, {label: [x for x in labels if x == label] for label in examples.labels}))
    model = next((r.model for r in records if r.ok), "")
    return Features(rows, labels, model, next(iter(weights)), failed, layer)


def pipeline():
    """What a head is: a class-balanced logistic regression on standardised features (scikit-learn)."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ExamplesError("imgq learn needs scikit-learn: pip install 'imgq[learn]'.") from None
    return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000))


def fit_head(features: Features, name: str, examples: dict[str, int]) -> Head:
    """Cross-validate, then fit on every example, a class-balanced logistic regression on standardised
    features; the standardisation is folded into the head's coefficients. Raises ExamplesError (one line)
    for features that are not finite, or a fit whose numbers are not (imgq.labels.heads.check_head)."""
    import numpy as np

    model = pipeline()  # raises ExamplesError without scikit-learn, before anything is computed
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.stack(features.rows).astype(np.float64)
    if not np.isfinite(x).all():  # scikit-learn's own refusal is a traceback
        bad = int((~np.isfinite(x).all(axis=1)).sum())
        raise ExamplesError(f"The features of {bad} of {len(x)} examples are not finite numbers (NaN or infinite): "
                            f"their model gives no probabilities for them; fix the model, then learn again.")
    y = np.asarray(features.labels)
    folds = min(MAX_FOLDS, min(int((y == label).sum()) for label in set(features.labels)))
    predicted = cross_val_predict(pipeline(), x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=0))
    model.fit(x, y)
    scaler, regression = model.named_steps["standardscaler"], model.named_steps["logisticregression"]
    labels = [str(c) for c in regression.classes_]
    scale = np.where(scaler.scale_ == 0, 1.0, scaler.scale_)
    coef = regression.coef_ / scale
    intercept = regression.intercept_ - coef @ scaler.mean_
    matrix = confusion_matrix(y, predicted, labels=labels)
    figures = {"cv_accuracy": round(float((predicted == y).mean()), 4), "cv_folds": folds,
               "examples": len(y), "confusion": {"labels": labels, "matrix": matrix.tolist()},
               "failed_examples": len(features.failed)}
    head = Head(name=name, labels=tuple(labels), base_model=features.model, weights=features.weights,
                feature_layer=features.layer, activation="sigmoid" if len(labels) == 2 else "softmax",
                coef=tuple(tuple(float(v) for v in row) for row in coef),
                intercept=tuple(float(v) for v in intercept), figures=figures, examples=examples,
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    try:
        check_head(head, f"The head learned from {features.layer}")
    except HeadError as exc:  # features so large that folding the standardisation in overflowed
        raise ExamplesError(str(exc)) from None
    return head


def confusion_table(head: Head) -> list[str]:
    """The cross-validated confusion table as text lines: a row per actual label, a column per predicted one."""
    labels, matrix = head.figures["confusion"]["labels"], head.figures["confusion"]["matrix"]
    width = max(len("actual \\ predicted"), *(len(label) for label in labels))
    cells = [max(len(label), 5) for label in labels]
    header = "  ".join(label.rjust(c) for label, c in zip(labels, cells, strict=True))
    lines = ["actual \\ predicted".ljust(width) + "  " + header]
    for label, row in zip(labels, matrix, strict=True):
        recall = row[labels.index(label)] / max(sum(row), 1)
        lines.append(label.ljust(width) + "  " + "  ".join(str(n).rjust(c) for n, c in zip(row, cells, strict=True))
                     + f"   recall {recall:.2f}")
    return lines


def write_head(head: Head, out: str) -> None:
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as file:
        json.dump(head.to_dict(), file, allow_nan=False)


def read_learn_records(results_file: str) -> list[ResultRecord]:
    with open(results_file, encoding="utf-8", errors="surrogateescape") as lines:
        return [ResultRecord.from_dict(json.loads(line)) for line in lines if line.strip()]


def forget_dumps(dump_root: str, job: str) -> None:
    """The learn job's feature dumps are not kept once read (the head holds what was learned): each file of its
    folder removed (an s3:// prefix's objects too), then the folder; what cannot be removed is left."""
    folder = os.path.dirname(dump_path(dump_root, job, 0))
    destination = destination_for(folder)
    with contextlib.suppress(OSError):
        for name in destination.names(folder):
            destination.remove(os.path.join(folder, name))
    destination.remove_folder(folder)


def temporary_results() -> str:
    fd, path = tempfile.mkstemp(prefix="imgq-learn-", suffix=".jsonl")
    os.close(fd)
    return path


def untrained(head: Head) -> bool:
    return is_untrained(head.weights)
