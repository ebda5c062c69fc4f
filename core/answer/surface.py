"""The score as a model of k per-layer rates (issue 21 part 5): `search.per_layer`'s counterpart of
core/answer/fit.py's curve.

With one rate per dropout module a trial is a point in [low, high]^k. The same Gaussian process
as the curve's (squared-exponential kernel, each trial's corrected SE squared as its own noise
variance, signal variance and one length scale for every layer chosen by marginal likelihood
over a small grid; distances in range widths) is fitted over the k-dimensional points. What it
says is read on candidates: the finished trials' own points and a scrambled Halton design of
`CANDIDATES` points over the box.

- `best`: the candidate with the fitted maximum, one rate per layer; `best_interval`: per layer,
  the 2.5% and 97.5% quantiles of the maximum's rate over `DRAWS` surfaces drawn from the
  posterior on the candidates;
- `tolerance`: the posterior sd at the fitted maximum (as the curve's);
- `max_expected_improvement()`: the largest expected improvement over the fitted maximum among
  the candidates: what core/answer/settled.py reads to stop a per-layer search;
- `slices`: for the picture, the fitted score along each layer's axis with every other layer at
  its best rate (the "per-layer panels" of the curve).

The recommendation of a per-layer study stays the trials' one-SE rule (core/answer/rules.py),
which orders trials by the mean of their rates: the surface has no single "strongest" direction.
numpy and scipy, imported where used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from droptune.core.answer.fit import MAX_POINTS, _kernel, _root, fitted_subset, hyperparameters

CANDIDATES = 256

DRAWS = 500
SLICE = 51  # points along each layer's axis


@dataclass(frozen=True)
class Slice:
    """The fitted score along one layer's rate, the other layers at the fitted best."""

    rates: list[float]
    mean: list[float]
    sd: list[float]


@dataclass(frozen=True)
class Surface:
    best: list[float]  # the fitted maximum's rate, layer by layer
    best_interval: list[tuple[float, float]]
    best_score: float
    tolerance: float
    expected_improvement: float
    slices: list[Slice]
    length_scale: float
    maximize: bool = True

    def max_expected_improvement(self) -> float:
        return self.expected_improvement


class _Posterior:
    """The GP conditioned on the trials (x in range widths, centred scores, larger is better)."""

    def __init__(self, x: Any, y: Any, noise: Any, var: float, scale: float) -> None:
        import numpy as np

        self.x, self.var, self.scale = x, var, scale
        self.chol = np.linalg.cholesky(_kernel(x, x, var, scale) + np.diag(noise))
        self.alpha = np.linalg.solve(self.chol.T, np.linalg.solve(self.chol, y))

    def mean_sd(self, at: Any) -> tuple[Any, Any]:
        import numpy as np

        ks = _kernel(at, self.x, self.var, self.scale)
        v = np.linalg.solve(self.chol, ks.T)
        return ks @ self.alpha, np.sqrt(np.clip(self.var - (v * v).sum(axis=0), 0.0, None))

    def cov(self, at: Any) -> Any:
        import numpy as np

        v = np.linalg.solve(self.chol, _kernel(at, self.x, self.var, self.scale).T)
        return _kernel(at, at, self.var, self.scale) - v.T @ v


def fit_surface(
    points: Sequence[Sequence[float]] | Any,
    scores: Sequence[float] | Any,
    ses: Sequence[float],
    low: float,
    high: float,
    maximize: bool = True,
    seed: int = 0,
) -> Surface | None:
    """The GP fit of `scores` (one per finished trial at `points`, k rates each, with its SE)
    over [low, high]^k; None below k + 2 distinct points (and below 3)."""
    import numpy as np
    from scipy.stats import qmc

    x = np.asarray(points, dtype=float)
    if x.ndim != 2 or high <= low or len(np.unique(x, axis=0)) < max(3, x.shape[1] + 2):
        return None
    sign = 1.0 if maximize else -1.0
    y = np.asarray(scores, dtype=float) * sign
    se = np.asarray(ses, dtype=float)
    if len(y) > MAX_POINTS:
        keep = fitted_subset(y, seed)
        x, y, se = x[keep], y[keep], se[keep]
    width = high - low
    u = (x - low) / width  # in range widths: the length scales are the curve's
    noise, centre, var, scale = hyperparameters(u, y, se)
    post = _Posterior(u, y - centre, noise, var, scale)
    design = qmc.Halton(d=x.shape[1], scramble=True, seed=seed).random(CANDIDATES)
    cand = np.vstack([design, u])
    mean, sd = post.mean_sd(cand)
    top = int(np.argmax(mean))
    rng = np.random.default_rng(seed)
    draws = mean + rng.standard_normal((DRAWS, len(cand))) @ _root(post.cov(cand), var).T
    tops = cand[np.argmax(draws, axis=1)] * width + low
    return Surface(
        best=[float(r) for r in cand[top] * width + low],
        best_interval=[
            (float(np.quantile(tops[:, d], 0.025)), float(np.quantile(tops[:, d], 0.975)))
            for d in range(x.shape[1])
        ],
        best_score=float(sign * (mean[top] + centre)),
        tolerance=float(sd[top]),
        expected_improvement=_max_ei(mean, sd),
        slices=[_slice(post, cand[top], d, centre, sign, low, width) for d in range(x.shape[1])],
        length_scale=float(scale * width),
        maximize=maximize,
    )


def _max_ei(mean: Any, sd: Any) -> float:
    from statistics import NormalDist

    unit, top, out = NormalDist(), float(max(mean)), 0.0
    for m, s in zip(mean, sd, strict=True):
        if s > 0:
            z = (float(m) - top) / float(s)
            out = max(out, (float(m) - top) * unit.cdf(z) + float(s) * unit.pdf(z))
    return out


def _slice(
    post: _Posterior, at: Any, d: int, centre: float, sign: float, low: float, width: float
) -> Slice:
    import numpy as np

    along = np.linspace(0.0, 1.0, SLICE)
    pts = np.repeat(at[None, :], SLICE, axis=0)
    pts[:, d] = along
    mean, sd = post.mean_sd(pts)
    return Slice(
        rates=[round(float(r), 6) for r in along * width + low],
        mean=[float(sign * (m + centre)) for m in mean],
        sd=[float(s) for s in sd],
    )
