"""The rates tied with the best, with a family-wise guarantee, and each one's chance of being best.

Every trial of a study is scored on the same J splits, so the per-split differences between two
trials are paired. The splits share rows, so the plain paired variance var(d) / J is far too small;
Nadeau & Bengio (2003) correct it to (1 / J + n_test / n_train) var(d), with J - 1 degrees of
freedom.

**The tied set** is Gupta's subset selection of the best (Gupta 1965; Hsu 1996, ch. 3) on those
corrected paired tests: a trial stays in unless some other trial beats it by more than
c * se, where se is the corrected standard error of their mean difference and c the one-sided
Student-t quantile at alpha / (k - 1) (Bonferroni over the k - 1 comparisons the truly best trial
takes part in). The truly best trial leaves the set only when one of its own k - 1 tests errs, so
the set holds it with probability at least 1 - alpha, as far as the corrected t is calibrated
(`bench/bench_ties.py` measures the coverage on simulated cross-validation scores with known
truth). Where every split moves by the same amount (accuracy is discrete), there is no variance
to test against: a trial is beaten then only when J splits of one sign are rarer than
alpha / (k - 1) by the exact sign test.

**P(best)**: each trial's mean difference from the observed best has the correlated-t posterior of
Benavoli et al. (2017, "Time for a change"): Student-t with J - 1 degrees of freedom, located at
the mean difference, scaled by the same corrected standard error. Drawing every trial's difference
from its posterior (independently: an approximation, since they share the best's splits) and
counting how often each is the largest estimates the probability that it is the best.

numpy and scipy are imported where used: the CLI imports this package and never calls these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

LEVEL = 0.95  # the family-wise confidence that the tied set holds the best trial
PROCEDURE = (
    "subset selection of the best (Gupta): one-sided Nadeau-Bengio corrected paired t-tests, "
    "Bonferroni over the k - 1 comparisons"
)
DRAWS = 4000  # posterior draws for P(best): its Monte Carlo error is below 0.008


@dataclass(frozen=True)
class Subset:
    """Indices into the rows given to `subset`, and P(best) of each row (summing to 1)."""

    members: list[int]
    p_best: list[float]


def _corrected_se(d: Any, j: int, ratio: float) -> Any:
    import numpy as np

    var = np.var(d, axis=-1, ddof=1)
    return np.sqrt((1.0 / j + ratio) * var)


def subset(
    folds: Sequence[Sequence[float]],
    ratio: float,
    maximize: bool,
    alpha: float = 1 - LEVEL,
    seed: int = 0,
) -> Subset:
    """The rows (trials x J split scores, all on the same splits) that the procedure keeps as
    possibly best, and each row's P(best). `ratio` is n_test / n_train of a split."""
    import numpy as np
    from scipy.stats import t as student_t

    x = np.asarray(folds, dtype=float) * (1.0 if maximize else -1.0)
    k, j = x.shape
    if k == 1:
        return Subset([0], [1.0])
    if j < 2:  # one split: nothing to test with; no row can be set aside
        return Subset(list(range(k)), [1.0 / k] * k)
    per = alpha / (k - 1)
    c = float(student_t.ppf(1 - per, j - 1))
    sign_rare = 0.5**j < per  # J differences of one sign are evidence at this level
    members = []
    for i in range(k):
        d = x - x[i]  # row r: how much r beats i, split by split
        mean = d.mean(axis=1)
        se = np.asarray(_corrected_se(d, j, ratio))
        beaten = np.where(se > 0, mean > c * se, sign_rare & (d.min(axis=1) > 0))
        beaten[i] = False
        if not beaten.any():
            members.append(i)
    return Subset(members, p_best(x, ratio, seed))


def p_best(x: Any, ratio: float, seed: int = 0) -> list[float]:
    """P(best) of each row of `x` (trials x J splits, larger is better) under the correlated-t
    posteriors of their mean differences from the row with the highest mean."""
    import numpy as np

    a = np.asarray(x, dtype=float)
    k, j = a.shape
    top = int(np.argmax(a.mean(axis=1)))
    d = a - a[top]
    loc = d.mean(axis=1)
    scale = np.asarray(_corrected_se(d, j, ratio))
    rng = np.random.default_rng(seed)
    draws = loc[:, None] + scale[:, None] * rng.standard_t(j - 1, size=(k, DRAWS))
    draws[top] = 0.0
    wins = np.bincount(np.argmax(draws, axis=0), minlength=k)
    return [float(w) / DRAWS for w in wins]


def describe(level: float = LEVEL) -> str:
    """The procedure and its level, as `/best` states them."""
    return f"{PROCEDURE}; holds the best with probability >= {level:.0%}"


def critical_value(k: int, j: int, alpha: float = 1 - LEVEL) -> float:
    """c for k trials on j splits (for the docs and the benchmark)."""
    from scipy.stats import t as student_t

    if k < 2 or j < 2:
        return math.inf
    return float(student_t.ppf(1 - alpha / (k - 1), j - 1))
