"""When a search has settled (issue 21, part 7): another batch could not move the answer.

`search.stop_when_settled` makes `n_trials` a cap: after each batch the worker compares the
answer before the batch with the answer after it, and ends the search early when all hold:

- the recommended rate moved by at most `STEADY` of the searched range's width (a batch that
  refines inside the tied band adds rates next to it; one of them may take over, a hair away);
- the tied set's range moved at either end by at most as much (refining inside the band adds
  members to the set without changing what it says);
- the fitted curve (core/answer/fit.py) expects no rate to beat the fitted maximum by a quarter
  of the best trial's standard error (`SHARE`; its largest expected improvement).

For a per-layer study the model is the fitted surface over its k rates (core/answer/surface.py),
whose largest expected improvement is read the same way once 2 (k + 1) trials have finished;
the recommended rate and the tied range compared are the mean of each trial's rates, as the
answer orders them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from optuna.trial import FrozenTrial, TrialState

from droptune.core.answer.fit import Fit, fit_curve
from droptune.core.answer.rates import layer_rates, primary_rate
from droptune.core.answer.rules import Answer, score_of
from droptune.core.schemas import Recommended
from droptune.core.spec.study import StudySpec

# Of the best's SE: an expected improvement below it cannot change the answer. A tenth (the issue's
# example) stopped no study of 40 trials on iris, wine, breast_cancer or digits: the fit's own
# uncertainty at its maximum keeps the largest expected improvement at 0.12-0.25 SE however many
# rates are tried, so a tenth is never reached.
SHARE = 0.25
# Of the range's width: how far the recommended rate and the tied range may move. 0.05 held the
# search on a hair's move of a rate inside the band; 0.1 stopped more of the replayed searches of
# bench/bench_pruning.py early (35 of 40 against 29) with the same answers.
STEADY = 0.1
PREFIX = "search settled after"  # how the study's `reason` starts when it stopped early


class Model(Protocol):
    """A fitted model of the score (the curve, or the per-layer surface)."""

    def max_expected_improvement(self) -> float: ...


def _points(
    trials: Sequence[FrozenTrial], spec: StudySpec
) -> list[tuple[list[float], float, float]]:
    """(rates, mean, SE corrected as the paired test is) of every scored COMPLETE trial: one
    rate, or one per layer with `per_layer`."""
    k = spec.cv.folds
    out = []
    for t in trials:
        s = score_of(t) if t.state == TrialState.COMPLETE else None
        if s is None:
            continue
        if spec.search.per_layer:
            rates = layer_rates(t.params)
        else:
            rate = primary_rate(t.params)
            rates = [] if rate is None else [rate]
        if rates:
            out.append((rates, s.mean, s.std * (1 / len(s.folds) + 1 / (k - 1)) ** 0.5))
    return out


def curve_fit(trials: Sequence[FrozenTrial], spec: StudySpec) -> Fit | None:
    """The fitted curve over the COMPLETE trials (each SE corrected as the paired test is);
    None for a per-layer study (see `model_fit`)."""
    if spec.search.per_layer:
        return None
    points = _points(trials, spec)
    if not points:
        return None
    rates, means, ses = zip(*points, strict=True)
    return fit_curve(
        [r[0] for r in rates],
        means,
        ses,
        spec.search.dropout_low,
        spec.search.dropout_high,
        spec.cv.direction == "maximize",
    )


def model_fit(trials: Sequence[FrozenTrial], spec: StudySpec) -> Model | None:
    """The curve, or with `per_layer` the surface over the layers' rates."""
    if not spec.search.per_layer:
        return curve_fit(trials, spec)
    from droptune.core.answer.surface import fit_surface

    points = _points(trials, spec)
    k = len(points[0][0]) if points else 0
    if len(points) < 2 * (k + 1):
        # With as few points as the surface accepts (k + 2) it is flat and sure of nothing (its
        # intervals span the range), so its expected improvement says nothing either.
        return None
    rates, means, ses = zip(*points, strict=True)
    return fit_surface(
        rates,
        means,
        ses,
        spec.search.dropout_low,
        spec.search.dropout_high,
        spec.cv.direction == "maximize",
    )


def _moved(a: Recommended, b: Recommended) -> float:
    """How far the recommended rate moved: the largest move of any layer's rate (per-layer), or
    of the one rate."""
    keys = [k for k in a.params if k.startswith("dropout") and k in b.params]
    if not keys:
        return abs(a.dropout - b.dropout)
    return max(abs(float(a.params[k]) - float(b.params[k])) for k in keys)


def settled(
    before: Answer, after: Answer, fit: Model | None, finished: int, cap: int, width: float
) -> str | None:
    """Why the search can stop now (one sentence), or None while a batch could still move it.
    `width` is the searched range's (dropout_high - dropout_low)."""
    if fit is None or before.recommended is None or after.recommended is None:
        return None
    if before.tied is None or after.tied is None or after.best is None:
        return None
    steady = STEADY * width
    if _moved(before.recommended, after.recommended) > steady:
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
        f"the fitted {'curve' if isinstance(fit, Fit) else 'surface over the layers'} "
        "expects no rate to beat the best by a quarter of its standard error "
        f"(largest expected improvement {gain:.3g} < {SHARE * se:.3g})"
    )
