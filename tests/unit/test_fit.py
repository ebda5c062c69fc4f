"""The curve as a model (core/answer/fit.py): on simulated studies with a known curve the fitted
maximum lands near the true best more often than the pointwise argmax, its interval holds the true
best rate, the recommendation lies at or beyond the maximum, and too few rates give no fit."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from droptune.core.answer.fit import fit_curve

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import sim_cv


def _fit(x: np.ndarray, w: sim_cv.World, maximize: bool = True):  # type: ignore[no-untyped-def]
    se = np.sqrt(1 / x.shape[1] + w.ratio) * x.std(axis=1, ddof=1)
    return fit_curve(w.rates.tolist(), x.mean(axis=1).tolist(), se.tolist(), 0.0, 0.8, maximize)


def test_the_fitted_maximum_beats_the_pointwise_argmax_on_a_peaked_curve() -> None:
    w = sim_cv.world("peaked")
    rng = np.random.default_rng(11)
    true_best = float(w.rates[np.argmax(w.truth)])  # 0.4 lies between two tried rates
    fit_err, argmax_err, covered = [], [], 0
    for _ in range(40):
        x = w.draw(rng)
        f = _fit(x, w)
        assert f is not None
        fit_err.append(abs(f.best - 0.4))
        argmax_err.append(abs(float(w.rates[np.argmax(x.mean(axis=1))]) - 0.4))
        covered += f.best_interval[0] <= 0.4 <= f.best_interval[1]
        assert f.best_interval[0] <= f.best <= f.best_interval[1]
        assert f.recommended >= f.best and f.tolerance > 0
        assert len(f.rates) == len(f.mean) == len(f.sd) == 101
    assert abs(true_best - 0.4) < 0.03
    assert np.median(fit_err) < np.median(argmax_err)
    assert covered >= 34, covered  # the 95% interval held the true best in 34+ of 40


def test_minimising_and_too_few_rates() -> None:
    w = sim_cv.world("peaked")
    x = w.draw(np.random.default_rng(0))
    up, down = _fit(x, w), _fit(-x, w, maximize=False)
    assert up is not None and down is not None
    assert down.best == pytest.approx(up.best) and down.mean[0] == pytest.approx(-up.mean[0])
    assert fit_curve([0.1, 0.1, 0.5], [0.9, 0.91, 0.8], [0.01] * 3, 0.0, 0.8) is None
    # every split equal somewhere (SE 0): still a fit, not a division by zero
    f = fit_curve([0.0, 0.3, 0.6], [0.9, 0.95, 0.9], [0.0, 0.01, 0.01], 0.0, 0.8)
    assert f is not None and 0.1 < f.best < 0.5


def test_a_study_of_thousands_of_trials_fits_a_subset_that_keeps_the_peak_and_the_shape() -> None:
    """Past MAX_POINTS the GP (n^3, fitted on every /curve) takes the best-scoring trials and a
    seeded draw of the rest: the peak stays where it is, and far from it the fit stays low (the
    best alone would revert to their own mean there)."""
    import numpy as np

    from droptune.core.answer.fit import MAX_POINTS, fit_curve, fitted_subset

    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 0.9, 3000)
    y = 0.9 - (x - 0.3) ** 2 + rng.normal(0.0, 0.01, 3000)
    keep = fitted_subset(y)
    assert len(keep) == MAX_POINTS and len(set(keep.tolist())) == MAX_POINTS
    assert int(np.argmax(y)) in keep.tolist()
    f = fit_curve(x.tolist(), y.tolist(), [0.01] * 3000, 0.0, 0.9)
    assert f is not None and abs(f.best - 0.3) < 0.05
    assert f.mean[-1] < f.mean[round(0.3 / 0.9 * 100)] - 0.2  # 0.9 fits ~0.54, not ~0.9
