"""The score-against-rate curve as a model: a Gaussian process over every finished trial, each
weighted by its own standard error, and what it says about the best rate.

The curve of one study is smooth and one-dimensional, and every trial measures it with noise
whose size it reports (its splits' spread). A GP with a squared-exponential kernel and each
trial's corrected SE squared as its own noise variance (heteroscedastic, known noise) pools
neighbouring rates, so the fitted maximum is not the winner's curse of a pointwise argmax. The
kernel's signal variance and length scale maximise the marginal likelihood over a small grid
(length scales 0.1 to 2 range widths: the curve has one broad shape, not wiggles); the mean is
the SE-weighted mean score.

From the fit, on 101 rates across the searched range:
- `best`: the rate of the fitted maximum; `best_interval`: the 2.5% and 97.5% quantiles of the
  maximum's rate over 500 curves drawn from the posterior;
- `recommended`: the strongest rate up to which (from the maximum rightwards) the fitted score
  stays within `tolerance` of the fitted maximum, where `tolerance` is the fitted maximum's own
  standard error (the posterior sd there): the one-standard-error rule, read off the curve
  instead of the noisy points. (A trial's SE as the tolerance was tried first: on simulated
  studies it walked past one true SE of the best in 67% of peaked ones; see bench/bench_ties.py.)

numpy only, imported where used (the CLI imports this package to draw a curve the server fitted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

GRID = 101
DRAWS = 500
SCALES = (0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)  # of the range's width
MIN_TRIALS = 3
# Past this many finished trials a subset is fitted (the GP costs n^3 and an API process fits on
# every /curve): the TOP best-scoring, where the maximum is, and a seeded draw of the rest, so the
# shape elsewhere stays (the best alone would let the fit revert to their mean far from them).
MAX_POINTS = 150
TOP = 30


@dataclass(frozen=True)
class Fit:
    """The fitted curve on `rates` (larger `mean` is better when maximising: scores as given)."""

    rates: list[float]
    mean: list[float]
    sd: list[float]
    best: float
    best_interval: tuple[float, float]
    recommended: float
    tolerance: float
    length_scale: float
    maximize: bool = True

    def max_expected_improvement(self) -> float:
        """The largest expected improvement over the fitted maximum across the grid:
        E[max(f(r) - f*, 0)] under the fit's normal posterior at each rate r (0 where the fit
        is certain). Small: no rate the fit knows of is likely to beat the best."""
        from statistics import NormalDist

        unit = NormalDist()
        sign = 1.0 if self.maximize else -1.0
        top = max(sign * m for m in self.mean)
        out = 0.0
        for m, sd in zip(self.mean, self.sd, strict=True):
            gap = sign * m - top
            if sd > 0:
                z = gap / sd
                out = max(out, gap * unit.cdf(z) + sd * unit.pdf(z))
        return out


def _kernel(a: Any, b: Any, var: float, scale: float) -> Any:
    """Squared-exponential covariance between points a [n] or [n, k] and b [m] or [m, k]."""
    import numpy as np

    a2 = a if a.ndim == 2 else a[:, None]
    b2 = b if b.ndim == 2 else b[:, None]
    # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b: no [n, m, k] intermediate
    d2 = (a2 * a2).sum(axis=1)[:, None] + (b2 * b2).sum(axis=1)[None, :] - 2.0 * a2 @ b2.T
    return var * np.exp(-0.5 * np.clip(d2, 0.0, None) / scale**2)


def _log_likelihood(x: Any, y: Any, noise: Any, var: float, scale: float) -> float:
    import numpy as np

    k = _kernel(x, x, var, scale) + np.diag(noise)
    try:
        chol = np.linalg.cholesky(k)
    except np.linalg.LinAlgError:
        return -math.inf
    alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, y))
    return float(-0.5 * y @ alpha - np.log(np.diag(chol)).sum())


def _root(cov: Any, var: float) -> Any:
    """A matrix R with R R^T ~ cov: Cholesky with a growing jitter (the posterior covariance is
    singular to rounding where the kernel is smooth)."""
    import numpy as np

    eye = np.eye(len(cov))
    for jitter in (1e-10, 1e-8, 1e-6, 1e-4):
        try:
            return np.linalg.cholesky(cov + jitter * var * eye)
        except np.linalg.LinAlgError:
            continue
    w, v = np.linalg.eigh(cov)
    return v * np.sqrt(np.clip(w, 0.0, None))


def fitted_subset(y: Any, seed: int = 0) -> Any:
    """Indices of the points fitted when there are more than MAX_POINTS (larger y is better)."""
    import numpy as np

    order = np.argsort(-np.asarray(y), kind="stable")
    rest = np.random.default_rng(seed).choice(order[TOP:], MAX_POINTS - TOP, replace=False)
    return np.sort(np.concatenate([order[:TOP], rest]))


def hyperparameters(x: Any, y: Any, ses: Sequence[float] | Any) -> tuple[Any, float, float, float]:
    """(noise variances, centre, signal variance, length scale) of the GP over points x (in
    range widths, [n] or [n, k]) with scores y (larger is better) and SEs `ses`: each trial's
    SE squared as its noise, the SE-weighted mean as the centre, and the signal variance and
    length scale of the largest marginal likelihood over a small grid."""
    import numpy as np

    se = np.asarray(ses, dtype=float)
    # A zero SE (every split equal) would make that trial exact: floor it at a tenth of the
    # others' median, or at a tiny share of the scores' own spread.
    positive = se[se > 0]
    floor = 0.1 * float(np.median(positive)) if len(positive) else 1e-3 * (np.ptp(y) or 1.0)
    noise = np.maximum(se, floor) ** 2
    w = 1.0 / noise
    centre = float((w * y).sum() / w.sum())
    yc = y - centre
    spread = max(float(np.var(yc)), float(noise.mean()), 1e-12)
    candidates = [(v * spread, s) for v in (0.25, 1.0, 4.0) for s in SCALES]
    var, scale = max(candidates, key=lambda c: _log_likelihood(x, yc, noise, *c))
    return noise, centre, var, scale


def fit_curve(
    rates: Sequence[float],
    scores: Sequence[float],
    ses: Sequence[float],
    low: float,
    high: float,
    maximize: bool = True,
    seed: int = 0,
) -> Fit | None:
    """The GP fit of `scores` (one per finished trial, at `rates`, each with its SE) over
    [low, high]; None below MIN_TRIALS distinct rates."""
    import numpy as np

    x = np.asarray(rates, dtype=float)
    y = np.asarray(scores, dtype=float) * (1.0 if maximize else -1.0)
    se = np.asarray(ses, dtype=float)
    if len(np.unique(x)) < MIN_TRIALS or high <= low:
        return None
    if len(y) > MAX_POINTS:
        keep = fitted_subset(y, seed)
        x, y, se = x[keep], y[keep], se[keep]
    width = high - low
    noise, centre, var, unit_scale = hyperparameters(x / width, y, se)
    yc, scale = y - centre, unit_scale * width
    grid = np.linspace(low, high, GRID)
    k = _kernel(x, x, var, scale) + np.diag(noise)
    ks = _kernel(grid, x, var, scale)
    chol = np.linalg.cholesky(k)
    alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, yc))
    mean = ks @ alpha
    v = np.linalg.solve(chol, ks.T)
    cov = _kernel(grid, grid, var, scale) - v.T @ v
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    rng = np.random.default_rng(seed)
    curves = mean + rng.standard_normal((DRAWS, GRID)) @ _root(cov, var).T
    tops = grid[np.argmax(curves, axis=1)]
    top = int(np.argmax(mean))
    tolerance = float(sd[top])
    end = top  # the stretch to the right of the maximum that stays within the tolerance
    while end + 1 < GRID and mean[end + 1] >= mean[top] - tolerance:
        end += 1
    sign = 1.0 if maximize else -1.0
    return Fit(
        rates=[round(float(r), 6) for r in grid],
        mean=[float(sign * (m + centre)) for m in mean],
        sd=[float(s) for s in sd],
        best=float(grid[top]),
        best_interval=(float(np.quantile(tops, 0.025)), float(np.quantile(tops, 0.975))),
        recommended=float(grid[end]),
        tolerance=tolerance,
        length_scale=float(scale),
        maximize=maximize,
    )
