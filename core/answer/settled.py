"""When a search has settled (issue 21, part 7): another batch could not move the answer.

`search.stop_when_settled` makes `n_trials` a cap: after each batch the worker compares the
answer before the batch with the answer after it, and ends the search early when all hold:

- the recommended rate moved by at most `STEADY` of the searched range's width (a batch that
  refines inside the tied band adds rates next to it; one of them may take over, a hair away);
- the tied set's range moved at either end by at most as much (refining inside the band adds
  members to the set without changing what it says);
- the fitted curve (core/answer/fit.py) expects no rate to beat the fitted maximum by a quarter
  of the best trial's standard error (`SHARE`; its largest expected improvement).

Per-layer studies have no fitted curve, so they never settle early.
"""

from __future__ import annotations

from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState

from droptune.core.answer.fit import Fit, fit_curve
from droptune.core.answer.rates import primary_rate
from droptune.core.answer.rules import Answer, score_of
from droptune.core.spec.study import StudySpec

# Of the best's SE: an expected improvement below it cannot change the answer. A tenth (the issue's
# example) stopped no study of 40 trials on iris, wine, breast_cancer or digits: the fit's own
# uncertainty at its maximum keeps the largest expected improvement at 0.12-0.25 SE however many
# rates are tried, so a tenth is never reached.
SHARE = 0.25
# Of the range's width: how far the recommended rate and the tied range may move. 0.05 held the
# search on a hair's move of a rate inside the band; 0.1 stops as many studies with the same
# answers in the replayed search of bench/bench_pruning.py.
STEADY = 0.1
PREFIX = "search settled after"  # how the study's `reason` starts when it stopped early


def curve_fit(trials: Sequence[FrozenTrial], spec: StudySpec) -> Fit | None:
    """The fitted curve over the COMPLETE trials (each SE corrected as the paired test is)."""
    if spec.search.per_layer:
        return None
    k = spec.cv.folds
    points = [
        (rate, s.mean, s.std * (1 / len(s.folds) + 1 / (k - 1)) ** 0.5)
        for t in trials
        if t.state == TrialState.COMPLETE
        and (s := score_of(t)) is not None
        and (rate := primary_rate(t.params)) is not None
    ]
    if not points:
        return None
    rates, means, ses = zip(*points, strict=True)
    return fit_curve(
        rates,
        means,
        ses,
        spec.search.dropout_low,
        spec.search.dropout_high,
        spec.cv.direction == "maximize",
    )


def settled(
    before: Answer, after: Answer, fit: Fit | None, finished: int, cap: int, width: float
) -> str | None:
    """Why the search can stop now (one sentence), or None while a batch could still move it.
    `width` is the searched range's (dropout_high - dropout_low)."""
    if fit is None or before.recommended is None or after.recommended is None:
        return None
    if before.tied is None or after.tied is None or after.best is None:
        return None
    steady = STEADY * width
    if abs(before.recommended.dropout - after.recommended.dropout) > steady:
        return None
    if (
        abs(before.tied.low - after.tied.low) > steady
        or abs(before.tied.high - after.tied.high) > steady
    ):
        return None
    best = score_of(after.best)
    if best is None:
        return None
    se = best.se
    gain = fit.max_expected_improvement()
    if gain >= SHARE * se:
        return None
    return (
        f"{PREFIX} {finished} of at most {cap} trials: the last batch moved neither the "
        f"recommended rate ({after.recommended.dropout:.3g}) nor the tied range "
        f"({after.tied.low:.3g}-{after.tied.high:.3g}) by more than {steady:.2g}, and "
        f"the fitted curve expects no rate to beat the best by a quarter of its standard error "
        f"(largest expected improvement {gain:.2g} < {SHARE * se:.2g})"
    )
