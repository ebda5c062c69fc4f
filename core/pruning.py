"""The paired, epoch-matched pruning rule (issue 21, part 2): which members of a stack to stop.

Every member of a stacked batch trains on the same splits from the same initial weights with
the same batches, so at epoch e the per-split differences between a member and the batch's
current leader are paired. Median pruning compares a member's mean with other trials' means at
the same epoch and stops slow starters: high-dropout networks learn slower, and on digits every
rate from 0.43 to 0.67 was stopped at epoch 2. This rule stops a member only when both hold:

1. **it is worse now**: the one-sided Nadeau-Bengio corrected paired t-test of its split scores
   against the leader's gives p below `alpha` (0.05 for each member; no multiplicity correction,
   because the second condition guards too: with Bonferroni over a 19-rate stack it stopped
   almost nothing, 97% of the member-epochs spent in `bench/bench_pruning.py`); and
2. **it cannot catch up**: the gap between the leader's mean and the member's has been closing
   at some pace over the last `window` epochs (the least-squares slope of that gap, never
   below zero); kept at that pace to the last epoch it would still be open. The leader goes on
   learning too, so the pace is the gap's, not the member's own: the rule before this one
   extrapolated the member's own slope against a leader that learned nothing more, and, with
   learning curves steepest early, kept nearly every member to epoch 15 of 20 (81% of the
   member-epochs in `bench/bench_pruning.py`); the gap's pace spends 51%, its one-SE answer
   as good on held-out rows (37 of 40 within one SE of the grid's answer either way), its best
   rate 2 runs less often the grid's best by CV (38 against 40 of 40; bench/results/pruning.md).

Before `warmup` epochs and at the last epoch nothing is stopped. Pure numpy (scipy lazily): the
engine-level benchmark (bench/bench_pruning.py) calls it without Optuna; worker/run/pruning.py
wraps it as an Optuna pruner.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

ALPHA = 0.05
WARMUP = 3
WINDOW = 2  # epochs the gap's pace is measured over (3: 55% of the epochs, 36/40 one-SE)


def _slope(means: Sequence[float]) -> float:
    n = len(means)
    if n < 2:
        return 0.0
    xbar = (n - 1) / 2
    ybar = sum(means) / n
    num = sum((i - xbar) * (y - ybar) for i, y in enumerate(means))
    den = sum((i - xbar) ** 2 for i in range(n))
    return num / den


def paired_stop(
    scores: Any,
    history: Mapping[int, Sequence[float]],
    keys: Sequence[int],
    epoch: int,
    epochs: int,
    ratio: float,
    maximize: bool,
    alpha: float = ALPHA,
    warmup: int = WARMUP,
    window: int = WINDOW,
) -> set[int]:
    """Rows of `scores` (active members x J split scores at `epoch`) to stop. `keys[r]` names
    row r's member in `history` (its mean score at each epoch so far, this one included);
    `ratio` is n_test / n_train of a split."""
    import numpy as np
    from scipy.stats import t as student_t

    x = np.asarray(scores, dtype=float) * (1.0 if maximize else -1.0)
    n, j = x.shape
    if n < 2 or j < 2 or epoch < warmup or epoch >= epochs or not np.isfinite(x).all():
        return set()
    means = x.mean(axis=1)
    leader = int(np.argmax(means))
    left = epochs - epoch
    c = float(student_t.ppf(1 - alpha, j - 1))
    sign = 1.0 if maximize else -1.0
    ahead = [sign * float(v) for v in history[keys[leader]][-window:]]
    stop = set()
    for r in range(n):
        if r == leader:
            continue
        d = x[leader] - x[r]  # how far the leader is ahead, split by split
        var = float(np.var(d, ddof=1))
        gap = float(d.mean())
        if var > 0:
            worse = gap > c * math.sqrt((1 / j + ratio) * var)
        else:  # every split the same gap: only a sign test, which J splits rarely pass
            worse = gap > 0 and 0.5**j < alpha
        if not worse:
            continue
        own = [sign * float(v) for v in history[keys[r]][-window:]]
        m = min(len(own), len(ahead))
        gaps = [a - b for a, b in zip(ahead[-m:], own[-m:], strict=True)]
        closing = max(0.0, -_slope(gaps))  # how fast the gap has been closing per epoch
        if gap - closing * left > 0:
            stop.add(r)
    return stop
