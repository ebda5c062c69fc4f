"""The tied set's guarantee (core/answer/ties.py), on simulated cross-validation scores with a
known truth (bench/sim_cv.py, the harness bench/bench_ties.py runs at 1 000 replicates): it holds
a truly best rate in at least 95% of replicates, sets aside rates that are clearly worse, and
its P(best) puts the mass on the rates that may be best."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from droptune.core.answer import ties

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import sim_cv


@pytest.mark.parametrize("curve", sorted(sim_cv.CURVES))
def test_the_set_holds_the_best_in_at_least_95_percent_of_studies(curve: str) -> None:
    w = sim_cv.world(curve, n_rates=12)
    rng = np.random.default_rng(7)
    best = w.best()
    held = sum(
        bool(best & set(ties.subset(w.draw(rng).tolist(), w.ratio, True).members))
        for _ in range(200)
    )
    assert held >= 190, f"{curve}: the set held a best rate in {held} of 200"


def test_clearly_worse_rates_are_set_aside_and_p_best_follows() -> None:
    """Rates 0.1 below the best on every split (ten true SEs) leave the set; the two equal
    best rates stay and share P(best)."""
    rng = np.random.default_rng(3)
    w = sim_cv.World(np.array([0.0, 0.2, 0.4, 0.6]), np.array([0.95, 0.95, 0.85, 0.85]))
    x = w.draw(rng)
    found = ties.subset(x.tolist(), w.ratio, True)
    assert found.members == [0, 1]
    assert sum(found.p_best) == pytest.approx(1.0)
    assert found.p_best[0] + found.p_best[1] > 0.99
    # minimising the same numbers turns the answer around
    assert ties.subset(x.tolist(), w.ratio, False).members == [2, 3]


def test_one_trial_one_split_and_equal_differences() -> None:
    assert ties.subset([[0.9, 0.8]], 0.25, True).members == [0]
    assert ties.subset([[0.9], [0.1]], 0.25, True).members == [0, 1]  # one split: cannot tell
    # Every split one row worse (accuracy is discrete): no variance; 5 splits of one sign are not
    # rarer than 0.05 / 1 by the sign test (0.03 is), so with two trials it is set aside...
    a = [0.90, 0.92, 0.91, 0.93, 0.90]
    b = [v - 0.01 for v in a]
    assert ties.subset([a, b], 0.25, True).members == [0]
    # ...but among 3 trials (0.05 / 2 = 0.025 < 0.03) it is not.
    assert ties.subset([a, b, [v - 0.5 for v in a]], 0.25, True).members == [0, 1]
    assert ties.critical_value(2, 5) > 2.0 and ties.critical_value(1, 5) == float("inf")
