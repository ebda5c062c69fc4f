"""Pruning rules on real training: no pruning, the median rule, an i-Epoch cut, and droptune's
paired epoch-matched rule (core/pruning.py), judged against a dense unpruned grid.

    .venv/bin/python bench/bench_pruning.py [--seeds 5] [--epochs 20] [--rates 19] [--out FILE]

For each data set and seed, 20% of the rows are held out (droptune's holdout split); on the rest
one stacked model trains a dense grid of rates over [0, 0.9] (19 by default) on the same 5 folds
for every epoch, unpruned, recording every member's split scores after every epoch. A second
stack trains every rate on all the searched rows and scores it on the held-out ones (what the
refit of that rate would score). Members of a stack never influence each other (own weights,
own masks), so stopping one changes nothing for the rest: every rule is then replayed exactly on
the recorded curves, with no second training run.

- **none**: every rate trains every epoch; the answer is the best final mean.
- **median**: from epoch 3, a member whose mean is below the median of the members still
  training at that epoch is stopped (Optuna's MedianPruner compares with the trials before it;
  inside one stack the other members are those trials).
- **i-Epoch** (Egele et al. 2024): every rate trains i epochs (i = 1 and 3 here); the best at
  epoch i alone trains on to the end.
- **paired**: core/pruning.py's rule, the stack's leader at each epoch as the reference.
- **paired, own pace**: the same test with the rule's earlier extrapolation (the member's own
  pace against a leader that learns nothing more), kept here for the comparison.
- **search: droptune** and **search: optuna**: not a pruning rule on the whole grid but the two
  strategies' whole searches (20 trials at most) replayed on the grid (bench/search_replay.py):
  droptune's design, refinement, paired pruning and stopping rule; TPE with the median pruner.

A rule's answer is the best final mean among the rates it let finish ("best"), or droptune's
default answer rule over them ("one-SE": the strongest rate whose mean is within one SE of that
best). It counts as right when its score is within one SE (std / sqrt(5) of the grid best's
splits, the SE a study reports) of the grid's best: by the full-training CV mean against the best
CV mean, by the held-out score against the held-out score of the grid's answer (its best CV
mean), and by the held-out score against the best held-out score of any rate (an oracle no
search sees; held-out scores of 20% of the rows are noisier than that SE, so no rule reaches it
often). Epochs are member-epochs spent, as a share of the grid's.
Needs torch, numpy and scikit-learn only (the engine and core.pruning): runs on a GPU machine as
is.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from droptune.core.pruning import _slope, paired_stop
from droptune.worker.engine.data import (
    Dataset,
    fold_data,
    holdout_split,
    load_dataset,
    prepare_folds,
    subset,
)
from droptune.worker.engine.kinds import CNNConfig, MLPConfig
from droptune.worker.engine.stacked import TrainConfig, TrialRates, train_trials

K = 5
RATIO = 1 / (K - 1)


def _noisy(ds: Dataset, seed: int, share: float) -> Dataset:
    """`ds` with `share` of the labels replaced by random ones: dropout should matter more."""
    rng = np.random.default_rng(seed)
    y = ds.y.copy()
    flip = rng.random(len(y)) < share
    y[flip] = rng.integers(0, ds.n_classes, flip.sum())
    return Dataset(ds.X, y, ds.n_classes, ds.image_shape)


def _diabetes(seed: int) -> Dataset:
    """scikit-learn's bundled diabetes table (442 rows, regression; scored by R², maximised)."""
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    return Dataset(X.astype(np.float32), y.astype(np.float64), 1, task="regression")


MLP = MLPConfig((128, 128))
# name: (data set for a seed, model, metric). The label-noise variants stand in for uploads of
# real, noisy tables (the bench trains through the engine, not the upload path).
DATA: dict[str, tuple[Callable[[int], Dataset], MLPConfig | CNNConfig, str]] = {
    "breast_cancer": (lambda s: load_dataset("breast_cancer"), MLP, "accuracy"),
    "breast_cancer_noisy": (
        lambda s: _noisy(load_dataset("breast_cancer"), s, 0.15),
        MLP,
        "accuracy",
    ),
    "wine": (lambda s: load_dataset("wine"), MLP, "accuracy"),
    "digits": (lambda s: load_dataset("digits"), MLP, "accuracy"),
    "digits_noisy": (lambda s: _noisy(load_dataset("digits"), s, 0.3), MLP, "accuracy"),
    "digits_cnn": (lambda s: load_dataset("digits"), CNNConfig((16, 32), 64), "accuracy"),
    "synthetic_noisy": (
        lambda s: _noisy(load_dataset("synthetic", {"seed": s}), s, 0.2),
        MLP,
        "accuracy",
    ),
    "diabetes": (_diabetes, MLP, "r2"),
}


def record(name: str, rates: np.ndarray, epochs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """([epochs, members, K] split scores of one unpruned stack on the searched rows, [members]
    held-out scores of every rate trained on all of them)."""
    make, model, metric = DATA[name]
    full = make(seed)
    searched, held = holdout_split(full.y, 0.2, seed, full.task)
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=1e-3, metric=metric, seed=seed)
    trials = [TrialRates((float(r),)) for r in rates]
    out = np.zeros((epochs, len(rates), K))

    def on_epoch(epoch: int, active: list[int], scores: np.ndarray) -> list[int]:
        out[epoch - 1, active] = scores
        return []

    train_trials(
        prepare_folds(subset(full, searched), K, seed), model, cfg, trials, "cpu", on_epoch
    )
    refit = fold_data(full, [(searched, held)])[0]
    heldout = np.array([r.fold_scores[0] for r in train_trials(refit, model, cfg, trials, "cpu")])
    return out, heldout


def replay(curves: np.ndarray, rule: str) -> tuple[list[int], int]:
    """(the members that finished, member-epochs spent) under `rule`."""
    epochs, n, _ = curves.shape
    active = list(range(n))
    spent = 0
    history: dict[int, list[float]] = {m: [] for m in range(n)}
    for e in range(1, epochs + 1):
        spent += len(active)
        scores = curves[e - 1, active]
        for m, row in zip(active, scores, strict=True):
            history[m].append(float(row.mean()))
        if e == epochs:
            break
        stop: set[int] = set()
        if rule == "median" and e >= 3:
            med = float(np.median(scores.mean(axis=1)))
            stop = {m for m, row in zip(active, scores, strict=True) if row.mean() < med}
        elif rule.startswith("i-epoch") and e == int(rule.split("-")[-1]):
            top = active[int(np.argmax(scores.mean(axis=1)))]
            stop = set(active) - {top}
        elif rule == "paired":
            rows = paired_stop(scores, history, active, e, epochs, RATIO, True)
            stop = {active[r] for r in rows}
        elif rule == "paired-own-pace":
            stop = _own_pace_rule(scores, history, active, e, epochs)
        active = [m for m in active if m not in stop]
    return active, spent


def _own_pace_rule(
    scores: np.ndarray, history: dict[int, list[float]], active: list[int], e: int, epochs: int
) -> set[int]:
    """The paired rule as it was before: the same corrected one-sided test at 0.05 from epoch
    3, but a member is kept while its own pace over its last three epochs, kept to the last
    epoch, would bring it level with the leader's mean as it is now."""
    from scipy.stats import t as student_t

    if e < 3:
        return set()
    means = scores.mean(axis=1)
    lead = int(np.argmax(means))
    c = float(student_t.ppf(0.95, K - 1))
    stop = set()
    for r in range(len(active)):
        d = scores[lead] - scores[r]
        var = float(np.var(d, ddof=1))
        sign = d.mean() > 0 and 0.5**K < 0.05  # every split the same gap: the sign test
        worse = d.mean() > c * np.sqrt((1 / K + RATIO) * var) if var > 0 else sign
        pace = max(0.0, _slope(history[active[r]][-3:]))
        if r != lead and worse and means[r] + pace * (epochs - e) < means[lead]:
            stop.add(active[r])
    return stop


RULES = ("none", "median", "i-epoch-1", "i-epoch-3", "paired-own-pace", "paired")
SEARCHES = ("search: droptune", "search: optuna")
PICKS = ("best", "one-SE")


def pick(final: np.ndarray, curves_last: np.ndarray, done: list[int], how: str) -> int:
    """The member a search answers with among those it let finish (rates ascend with index)."""
    top = max(done, key=lambda m: final[m])
    if how == "best":
        return top
    se = float(curves_last[top].std(ddof=1) / np.sqrt(K))
    return max(m for m in done if final[m] >= final[top] - se)


def _chosen(
    rule: str, curves: np.ndarray, final: np.ndarray, rates: np.ndarray
) -> tuple[list[int], int]:
    """([the best's member, the one-SE answer's member], member-epochs spent) under `rule`."""
    if rule in SEARCHES:
        from search_replay import droptune_search, optuna_search  # Optuna and the answer code

        search = droptune_search if rule == "search: droptune" else optuna_search
        o = search(curves, rates)
        return [o.best, o.recommended], o.spent
    done, cost = replay(curves, rule)
    return [pick(final, curves[-1], done, how) for how in PICKS], cost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--rates", type=int, default=19)
    ap.add_argument("--data", default=",".join(DATA))
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--cache", type=Path, help="keep the recorded curves here (.npy) and replay them next time"
    )
    a = ap.parse_args()
    rates = np.linspace(0.0, 0.9, a.rates)
    keys = [(r, p) for r in RULES + SEARCHES for p in PICKS]
    cv_right = dict.fromkeys(keys, 0)
    held_right = dict.fromkeys(keys, 0)
    oracle_right = dict.fromkeys(keys, 0)
    spent: dict[str, list[float]] = {r: [] for r in RULES + SEARCHES}
    runs = 0
    lines = []
    t0 = time.perf_counter()
    for name in a.data.split(","):
        for seed in range(a.seeds):
            stem = f"{name}-{seed}-{a.rates}-{a.epochs}-h20"
            cached = a.cache / f"{stem}.npz" if a.cache else None
            if cached is not None and cached.exists():
                saved = np.load(cached)
                curves, heldout = saved["curves"], saved["heldout"]
            else:
                curves, heldout = record(name, rates, a.epochs, seed)
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(cached, curves=curves, heldout=heldout)
            final = curves[-1].mean(axis=1)
            best = int(np.argmax(final))
            se = float(curves[-1, best].std(ddof=1) / np.sqrt(K))
            runs += 1
            cells = []
            for rule in RULES + SEARCHES:
                chosen, cost = _chosen(rule, curves, final, rates)
                share = cost / (a.epochs * a.rates)
                spent[rule].append(share)
                marks = []
                for how, m in zip(PICKS, chosen, strict=True):
                    cv_ok = final[best] - final[m] <= se
                    held_ok = heldout[best] - heldout[m] <= se
                    oracle_ok = heldout.max() - heldout[m] <= se
                    cv_right[rule, how] += cv_ok
                    held_right[rule, how] += held_ok
                    oracle_right[rule, how] += oracle_ok
                    marks.append(f"{rates[m]:.2f}{'' if held_ok else ' ✗'}")
                cells.append(f"{' / '.join(marks)} ({share:.0%})")
            oracle = int(np.argmax(heldout))
            lines.append(
                f"| {name} | {seed} | {rates[best]:.2f} / {rates[oracle]:.2f}"
                f" ({heldout[oracle]:.3f}) | " + " | ".join(cells) + " |"
            )
            print(lines[-1], flush=True)
    head = (
        f"{a.rates} rates in [0, 0.9], MLP [128, 128] (digits_cnn: CNN [16, 32], head 64),"
        f" {a.epochs} epochs, {K}-fold CV on 80% of the rows, 20% held out, {a.seeds} seeds;"
        f" {time.perf_counter() - t0:.0f} s\n\n"
        "Each cell: the rate answered by best / one-SE among the rates the rule let finish"
        " (✗: its held-out score is more than one SE below that of the grid's answer), and the"
        " member-epochs spent as a share of the grid's.\n\n"
        "| data | seed | grid best by CV / by held-out (its held-out score) | "
        + " | ".join(RULES + SEARCHES)
        + " |\n"
        "|---|---|---|" + "---|" * len(RULES + SEARCHES) + "\n"
    )
    summary = (
        "\n\n| rule | CV, vs the grid's best: best / one-SE | held-out, vs the grid's answer:"
        " best / one-SE | held-out, vs the best held-out: best / one-SE |"
        " member-epochs (median share) |\n|---|---|---|---|---|\n"
        + "\n".join(
            f"| {r} | {cv_right[r, 'best']}/{runs} / {cv_right[r, 'one-SE']}/{runs} |"
            f" {held_right[r, 'best']}/{runs} / {held_right[r, 'one-SE']}/{runs} |"
            f" {oracle_right[r, 'best']}/{runs} / {oracle_right[r, 'one-SE']}/{runs} |"
            f" {statistics.median(spent[r]):.0%} |"
            for r in RULES + SEARCHES
        )
        + "\n"
    )
    table = head + "\n".join(lines) + summary
    print("\n" + table)
    if a.out:
        a.out.write_text(table)


if __name__ == "__main__":
    main()
