"""The duplicates of a set of embedding rows, found one way for every command that uses them: `imgq duplicates`
writes them, `imgq report` shows them and `imgq tag --duplicates` marks them. Each calls ``find`` with the same
defaults (``Asked``), so the three agree on the calibrated threshold, the groups and each group's keeper
(producer/alike/report.py ``keeper``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgq.contract import is_untrained

if TYPE_CHECKING:  # numpy, at the top of both: the CLI imports Asked at its start, and numpy only on use
    from producer.alike.calibrate import ReadLimits
    from producer.alike.report import Rows

CALIBRATION_ROWS = 4_000  # distinct pairs are counted among at most this many rows (8 million pairs)


@dataclass(frozen=True)
class Asked:
    """What `imgq duplicates`' options ask; the defaults are its options' defaults, and what `imgq report` and
    `imgq tag --duplicates` use. ``target``: the false-match rate of the same-picture threshold; ``sample``:
    photos altered to calibrate it; ``max_distance``: a threshold given instead (None: calibrated);
    ``confirm`` and ``moment``: the least embedding cosines of a same picture and a same moment (trained
    weights only)."""

    target: float = 0.0001
    sample: int = 50
    max_distance: int | None = None
    confirm: float = 0.8
    moment: float = 0.9


@dataclass(frozen=True)
class Found:
    """The members of the groups (producer.alike.report.FIELDS, one dict each) and the threshold used."""

    members: list[dict]
    threshold: int
    trained: bool

    @property
    def groups(self) -> int:
        return len({m["group"] for m in self.members})

    def non_keepers(self) -> set[tuple[str, int]]:
        """``(job, image)`` of every member that is not its group's keeper."""
        return {(m["job"], m["image"]) for m in self.members if not m["keeper"]}


def find(rows: Rows, limits: ReadLimits, asked: Asked = Asked(),
         say: Callable[[str], None] = lambda line: None, close: Callable | None = None) -> Found:
    """The groups of ``rows``: the same-picture threshold calibrated on the rows' photos (read within
    ``limits``) unless ``asked.max_distance`` gives it; ``say`` receives what was measured, line by line.
    ``close``: how pairs of close embeddings are found (imgq.alike.pairs.cosine_pairs, exact, by default; `imgq
    duplicates` passes the collection's index above a size). Raises AlikeError when the threshold cannot be
    calibrated (no photo readable here, or distinct photos too close for the target)."""
    from imgq.alike.groups import Rules
    from producer.alike.report import member_rows

    trained = not is_untrained(rows.vectors.weights)
    threshold = asked.max_distance if asked.max_distance is not None else _calibrated(rows, limits, asked, say)
    if not trained:
        say(f"Weights {rows.vectors.weights} are random: same picture rests on the perceptual hash alone, and the "
            f"same-moment tier is off.")
    rules = Rules(hash_bits=threshold, confirm=asked.confirm if trained else None,
                  moment=asked.moment if trained else None)
    return Found(member_rows(rows, rules) if close is None else member_rows(rows, rules, close), threshold, trained)


def _calibrated(rows: Rows, limits: ReadLimits, asked: Asked, say: Callable[[str], None]) -> int:
    import numpy as np

    from producer.alike.calibrate import calibrate
    from producer.alike.report import AlikeError

    v = rows.vectors
    picked = np.arange(len(v))
    if len(picked) > CALIBRATION_ROWS:
        picked = np.sort(np.random.default_rng(0).choice(len(v), CALIBRATION_ROWS, replace=False))
    measured = calibrate([str(p) for p in v.path], v.phash[picked], v.content[picked], limits, asked.target,
                         asked.sample)
    for line in measured.lines():
        say(line)
    if measured.sampled == 0:
        raise AlikeError("No photo of the jobs could be read here to calibrate: give --max-distance.")
    if measured.threshold < 0:
        raise AlikeError(f"Distinct photos of the jobs are identical in pHash beyond the target "
                         f"{asked.target:.2%}: give --max-distance or a larger --false-match-rate.")
    return measured.threshold
