"""A per-layer study's curve (issue 22): its x-axis was the mean of the layers' rates, which no
layer has. The JSON carries each trial's rates per layer, and the picture has one panel per
layer, each marking that layer's best and recommended rates."""

from __future__ import annotations

import re

from droptune.core.answer.curve import build_curve
from droptune.core.schemas import BestOut, Recommended, Score, TrialOut
from droptune.core.spec.study import StudySpec
from droptune.service.routes.curve import draw

SPEC = StudySpec.model_validate(
    {
        "dataset": {"builtin": "digits"},
        "model": {"hidden": [64, 64]},
        "cv": {"folds": 3},
        "search": {"n_trials": 3, "per_layer": True},
    }
)


def trial(number: int, rates: tuple[float, float], folds: list[float]) -> TrialOut:
    mean = sum(folds) / len(folds)
    return TrialOut(
        number=number,
        state="COMPLETE",
        params={"dropout_0": rates[0], "dropout_1": rates[1]},
        value=mean,
        score=Score(mean=mean, std=0.01, folds=folds),
        epochs=20,
        train_seconds=1.0,
        device="cpu",
        worker="w",
        attempt=0,
        reason=None,
        p_vs_best=None,
        started_at=None,
        ended_at=None,
    )


def test_the_per_layer_curve_has_a_panel_per_layer() -> None:
    trials = [
        trial(0, (0.1, 0.6), [0.95, 0.96, 0.97]),
        trial(1, (0.4, 0.2), [0.90, 0.91, 0.92]),
        trial(2, (0.7, 0.05), [0.80, 0.82, 0.81]),
    ]
    best = BestOut(
        study_id=3,
        dropout=0.35,
        params={"dropout_0": 0.1, "dropout_1": 0.6},
        score=trials[0].score,
        metric="accuracy",
        direction="maximize",
        trial=0,
        one_se_dropout=0.35,
        one_se_trial=0,
        complete=True,
        status="succeeded",
        recommended=Recommended(
            dropout=0.35,
            rule="one_se",
            trial=0,
            why="w",
            params={"dropout_0": 0.1, "dropout_1": 0.6},
        ),
    )
    curve = build_curve(3, SPEC, best, trials)
    assert curve.layers == ["dropout_0", "dropout_1"]
    by_trial = {p.trial: p.params for p in curve.points}
    assert by_trial[2] == {"dropout_0": 0.7, "dropout_1": 0.05}
    assert curve.recommended_params == {"dropout_0": 0.1, "dropout_1": 0.6}
    svg = draw(curve, "per layer", "svg").decode()
    titles = re.findall(r"layer (\d) \((dropout_\d)\): best ([\d.]+), recommended ([\d.]+)", svg)
    assert titles == [("1", "dropout_0", "0.10", "0.10"), ("2", "dropout_1", "0.60", "0.60")]
    assert svg.count("layer 1's dropout rate") == 1 and svg.count("layer 2's dropout rate") == 1
    # a study searching one rate keeps its one panel
    plain = build_curve(3, StudySpec.model_validate({"dataset": {"builtin": "iris"}}), best, [])
    assert plain.layers == [] and "layer 1" not in draw(plain, "one", "svg").decode()


def test_the_per_layer_curve_carries_the_fitted_surface_and_draws_its_slices() -> None:
    """With k + 2 finished points the curve's `surface` is the per-layer GP: its best point
    near the trials' peak, one slice per layer, each drawn in its panel."""
    grid = [(a, b) for a in (0.05, 0.3, 0.55, 0.8) for b in (0.1, 0.45, 0.8)]
    trials = []
    for n, (a, b) in enumerate(grid):
        top = 0.95 - 0.3 * ((a - 0.3) ** 2 + (b - 0.45) ** 2)
        trials.append(trial(n, (a, b), [top - 0.003, top, top + 0.003]))
    peak = max(trials, key=lambda t: t.value or 0.0)
    best = BestOut(
        study_id=4,
        dropout=0.375,
        params=dict(peak.params),
        score=peak.score,
        metric="accuracy",
        direction="maximize",
        trial=peak.number,
        one_se_dropout=0.375,
        one_se_trial=peak.number,
        complete=True,
        status="succeeded",
    )
    curve = build_curve(4, SPEC, best, trials)
    assert curve.fit is None and curve.surface is not None
    s = curve.surface
    assert abs(s.best["dropout_0"] - 0.3) < 0.15 and abs(s.best["dropout_1"] - 0.45) < 0.15
    assert [c.layer for c in s.slices] == ["dropout_0", "dropout_1"]
    assert all(s.best_low[n] <= s.best[n] <= s.best_high[n] for n in s.best)
    svg = draw(curve, "surface", "svg").decode()
    assert 'id="fit-dropout_0"' in svg and 'id="fit-dropout_1"' in svg
    assert svg.count("fitted surface") == 1  # one legend entry for both panels
    # Too few points for two layers (k + 2 = 4): no surface, the panels still draw.
    few = build_curve(4, SPEC, best, trials[:3])
    assert few.surface is None and "fit-dropout_0" not in draw(few, "few", "svg").decode()
