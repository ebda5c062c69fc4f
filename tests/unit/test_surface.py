"""The per-layer model (core/answer/surface.py): a GP over k rates finds a known peak, says how
sure it is, works for losses too, and is what the stopping rule reads for a per-layer study."""

from __future__ import annotations

import statistics

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from droptune.core.answer.rules import answer
from droptune.core.answer.settled import curve_fit, model_fit, settled
from droptune.core.answer.surface import Surface, fit_surface
from tests.unit.test_answer import spec

PEAK = (0.2, 0.6)


def _scores(points: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    true = 0.95 - 0.5 * ((points[:, 0] - PEAK[0]) ** 2 + (points[:, 1] - PEAK[1]) ** 2)
    return true + rng.normal(0.0, noise, len(points))


def test_the_surface_finds_a_known_peak_of_two_layers_and_brackets_it() -> None:
    points = np.random.default_rng(0).uniform(0.0, 0.9, (20, 2))
    s = fit_surface(points, _scores(points, 0.003, 1), [0.003] * 20, 0.0, 0.9)
    assert isinstance(s, Surface)
    assert abs(s.best[0] - PEAK[0]) < 0.1 and abs(s.best[1] - PEAK[1]) < 0.1, s.best
    for (lo, hi), true in zip(s.best_interval, PEAK, strict=True):
        assert lo <= true <= hi
    assert abs(s.best_score - 0.95) < 0.01 and s.tolerance > 0
    # Each slice runs along one layer with the other at its best: highest near that layer's peak.
    for sl, true in zip(s.slices, PEAK, strict=True):
        assert abs(sl.rates[int(np.argmax(sl.mean))] - true) < 0.15
    # A loss (minimised) of the same numbers turned around gives the same point.
    loss = fit_surface(points, -_scores(points, 0.003, 1), [0.003] * 20, 0.0, 0.9, False)
    assert loss is not None and loss.best == s.best and abs(loss.best_score + s.best_score) < 1e-9


def test_more_trials_leave_less_to_expect_and_too_few_give_no_surface() -> None:
    few = np.random.default_rng(2).uniform(0.0, 0.9, (6, 2))
    many = np.random.default_rng(3).uniform(0.0, 0.9, (40, 2))
    a = fit_surface(few, _scores(few, 0.003, 4), [0.003] * 6, 0.0, 0.9)
    b = fit_surface(many, _scores(many, 0.003, 5), [0.003] * 40, 0.0, 0.9)
    assert a is not None and b is not None
    assert b.max_expected_improvement() < a.max_expected_improvement()
    assert fit_surface(few[:3], [0.9, 0.91, 0.92], [0.01] * 3, 0.0, 0.9) is None  # k + 2 = 4


def _trial(rates: tuple[float, float], folds: list[float]) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=TrialState.COMPLETE,
        value=statistics.fmean(folds),
        params={"dropout_0": rates[0], "dropout_1": rates[1]},
        distributions={n: FloatDistribution(0.0, 0.9) for n in ("dropout_0", "dropout_1")},
        user_attrs={
            "fold_scores": folds,
            "score_mean": statistics.fmean(folds),
            "score_std": statistics.stdev(folds),
        },
    )


def test_a_per_layer_study_settles_on_its_surface() -> None:
    sp = spec(search={"per_layer": True}, model={"hidden": [8, 8]})
    points = np.random.default_rng(6).uniform(0.0, 0.9, (60, 2))
    means = _scores(points, 0.0, 0)
    trials = [
        _trial((float(a), float(b)), [float(m) + d for d in (-0.02, 0.0, 0.02, -0.01, 0.01)])
        for (a, b), m in zip(points, means, strict=True)
    ]
    assert curve_fit(trials, sp) is None  # no one-dimensional curve of a per-layer study
    fit = model_fit(trials, sp)
    assert isinstance(fit, Surface)
    before = answer(trials[:-1], sp)
    after = answer(trials, sp)
    why = settled(before, after, fit, 60, 80, 0.9)
    assert why is not None and "surface over the layers" in why
    # The recommended trial moved in one layer only: not settled.
    moved = answer([*trials, _trial((0.25, 0.55), [0.99, 0.99, 0.99, 0.98, 0.99])], sp)
    assert settled(after, moved, fit, 61, 80, 0.9) is None
