"""The tied set and the recommendation on simulated cross-validation scores with a known truth.

    .venv/bin/python bench/bench_ties.py [--replicates 1000] [--rates 16] [--out FILE]

No training: bench/sim_cv.py draws each trial's K = 5 split scores around a known curve (flat,
peaked, plateau, edge optimum) with K-fold's correlation between splits. For every replicate the
rules droptune has had are applied to the same draws:

- tied set, **pairwise** (before issue 21): every rate whose paired corrected t-test against the
  observed best gives p >= 0.05;
- tied set, **subset** (now): core/answer/ties.py's subset selection, 95% family-wise.

and it reports how often each set holds a truly best rate (the goal: >= 95%), how many rates it
holds, and how often each recommendation (the observed best, and the one-SE rule) lies within one
true standard error of the true best score. Seeded: the same arguments give the same table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sim_cv

from droptune.core.answer import ties
from droptune.core.answer.fit import fit_curve
from droptune.core.answer.rules import ALPHA, corrected_t_test


def pairwise_set(x: np.ndarray, ratio: float) -> list[int]:
    """The pre-issue-21 tied set: p >= ALPHA against the observed best, one test at a time."""
    top = int(np.argmax(x.mean(axis=1)))
    out = []
    for i in range(len(x)):
        p = 1.0 if i == top else corrected_t_test((x[i] - x[top]).tolist(), ratio)
        if p is not None and p >= ALPHA:
            out.append(i)
    return out


def one_se(x: np.ndarray, rates: np.ndarray, ratio: float) -> int:
    """The one-SE rule as core/answer/rules.py applies it: the strongest rate within one
    (unpaired) SE of the best mean that the paired test does not call worse."""
    means = x.mean(axis=1)
    top = int(np.argmax(means))
    se = x[top].std(ddof=1) / np.sqrt(x.shape[1])
    ok = [top]
    for i in range(len(x)):
        p = corrected_t_test((x[i] - x[top]).tolist(), ratio)
        if means[i] >= means[top] - se - 1e-12 and (p is None or p >= ALPHA):
            ok.append(i)
    return max(ok, key=lambda i: rates[i])


def run(curve: str, replicates: int, n_rates: int, seed: int) -> dict[str, float]:
    w = sim_cv.world(curve, n_rates)
    rng = np.random.default_rng(seed)
    best = w.best()
    top = float(w.truth.max())
    hits = {"pairwise": 0, "subset": 0}
    size = {"pairwise": 0, "subset": 0}
    near = {"argmax": 0, "one_se": 0, "fit_best": 0, "fit_one_se": 0}
    truth = sim_cv.CURVES[curve]
    for _ in range(replicates):
        x = w.draw(rng)
        sets = {
            "pairwise": pairwise_set(x, w.ratio),
            "subset": ties.subset(x.tolist(), w.ratio, True).members,
        }
        for name, members in sets.items():
            hits[name] += bool(best & set(members))
            size[name] += len(members)
        picks = {"argmax": int(np.argmax(x.mean(axis=1))), "one_se": one_se(x, w.rates, w.ratio)}
        for name, i in picks.items():
            near[name] += top - float(w.truth[i]) <= w.true_se
        se = np.sqrt(1 / x.shape[1] + w.ratio) * x.std(axis=1, ddof=1)
        f = fit_curve(w.rates.tolist(), x.mean(axis=1).tolist(), se.tolist(), 0.0, 0.8)
        assert f is not None
        for name, rate in (("fit_best", f.best), ("fit_one_se", f.recommended)):
            near[name] += top - float(truth(np.array([rate]))[0]) <= w.true_se
    n = float(replicates)
    return {
        "cover_pairwise": hits["pairwise"] / n,
        "cover_subset": hits["subset"] / n,
        "size_pairwise": size["pairwise"] / n,
        "size_subset": size["subset"] / n,
        "near_argmax": near["argmax"] / n,
        "near_one_se": near["one_se"] / n,
        "near_fit_best": near["fit_best"] / n,
        "near_fit_one_se": near["fit_one_se"] / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--rates", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    head = (
        f"{a.replicates} replicates per curve, {a.rates} rates in [0, 0.8], 5-fold CV "
        f"(split sd {sim_cv.World(np.zeros(1), np.zeros(1)).sigma}), seed {a.seed}\n\n"
        "| curve | tied set holds the best: pairwise / subset | rates in the set: pairwise / "
        "subset | recommendation within 1 true SE of the best: argmax / one-SE / "
        "fitted maximum / fitted one-SE |\n|---|---|---|---|\n"
    )
    rows = []
    for i, curve in enumerate(sim_cv.CURVES):
        r = run(curve, a.replicates, a.rates, a.seed + i)
        rows.append(
            f"| {curve} | {r['cover_pairwise']:.1%} / **{r['cover_subset']:.1%}** | "
            f"{r['size_pairwise']:.1f} / {r['size_subset']:.1f} | "
            f"{r['near_argmax']:.1%} / {r['near_one_se']:.1%} / "
            f"{r['near_fit_best']:.1%} / {r['near_fit_one_se']:.1%} |"
        )
        print(rows[-1], flush=True)
    table = head + "\n".join(rows) + "\n"
    print("\n" + table)
    if a.out:
        a.out.write_text(table)


if __name__ == "__main__":
    main()
