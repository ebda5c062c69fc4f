"""Pruning rules on real training: no pruning, the median rule, an i-Epoch cut, and droptune's
paired epoch-matched rule (core/pruning.py), judged against a dense unpruned grid.

    .venv/bin/python bench/bench_pruning.py [--seeds 3] [--epochs 20] [--rates 19] [--out FILE]

For each data set and seed, one stacked model trains a dense grid of rates over [0, 0.9] (19 by
default) on the same 5 folds for every epoch, unpruned, recording every member's split scores
after every epoch. Members of a stack never influence each other (own weights, own masks), so
stopping one changes nothing for the rest: every rule is then replayed exactly on the recorded
curves, with no second training run.

- **none**: every rate trains every epoch; the answer is the best final mean.
- **median**: from epoch 3, a member whose mean is below the median of the members still
  training at that epoch is stopped (Optuna's MedianPruner compares with the trials before it;
  inside one stack the other members are those trials).
- **i-Epoch** (Egele et al. 2024): every rate trains i epochs (i = 1 and 3 here); the best at
  epoch i alone trains on to the end.
- **paired**: core/pruning.py's rule, the stack's leader at each epoch as the reference.

The answer of a rule is the best final mean among the rates it let finish. It counts as right
when its full-training score is within one SE (std / sqrt(5) of the best's splits) of the grid's
best final mean. Epochs are member-epochs spent, as a share of the grid's. Needs torch, numpy and
scikit-learn only (the engine and core.pruning): runs on a GPU machine as is.
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

from droptune.core.pruning import paired_stop
from droptune.worker.engine.data import Dataset, load_dataset, prepare_folds
from droptune.worker.engine.kinds import MLPConfig
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


DATA: dict[str, Callable[[int], Dataset]] = {
    "breast_cancer": lambda s: load_dataset("breast_cancer"),
    "wine": lambda s: load_dataset("wine"),
    "digits": lambda s: load_dataset("digits"),
    "digits_noisy": lambda s: _noisy(load_dataset("digits"), s, 0.3),
    "synthetic_noisy": lambda s: _noisy(load_dataset("synthetic", {"seed": s}), s, 0.2),
}


def record(ds: Dataset, rates: np.ndarray, epochs: int, seed: int) -> np.ndarray:
    """[epochs, members, K] split scores of one unpruned stack."""
    data = prepare_folds(ds, K, seed, "cpu")
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=1e-3, seed=seed)
    out = np.zeros((epochs, len(rates), K))

    def on_epoch(epoch: int, active: list[int], scores: np.ndarray) -> list[int]:
        out[epoch - 1, active] = scores
        return []

    train_trials(data, MLPConfig((128, 128)), cfg, [TrialRates((float(r),)) for r in rates],
                 "cpu", on_epoch)  # fmt: skip
    return out


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
        active = [m for m in active if m not in stop]
    return active, spent


RULES = ("none", "median", "i-epoch-1", "i-epoch-3", "paired")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--rates", type=int, default=19)
    ap.add_argument("--data", default=",".join(DATA))
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--cache", type=Path, help="keep the recorded curves here (.npy) and replay them next time"
    )
    a = ap.parse_args()
    rates = np.linspace(0.0, 0.9, a.rates)
    right = {r: 0 for r in RULES}
    spent = {r: [] for r in RULES}  # type: dict[str, list[float]]
    runs = 0
    lines = []
    t0 = time.perf_counter()
    for name in a.data.split(","):
        for seed in range(a.seeds):
            cached = a.cache / f"{name}-{seed}-{a.rates}-{a.epochs}.npy" if a.cache else None
            if cached is not None and cached.exists():
                curves = np.load(cached)
            else:
                curves = record(DATA[name](seed), rates, a.epochs, seed)
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    np.save(cached, curves)
            final = curves[-1].mean(axis=1)
            best = int(np.argmax(final))
            se = float(curves[-1, best].std(ddof=1) / np.sqrt(K))
            runs += 1
            cells = []
            for rule in RULES:
                done, cost = replay(curves, rule)
                pick = max(done, key=lambda m: final[m])
                ok = final[best] - final[pick] <= se
                right[rule] += ok
                share = cost / (a.epochs * a.rates)
                spent[rule].append(share)
                cells.append(f"{rates[pick]:.2f}{'' if ok else ' ✗'} ({share:.0%})")
            lines.append(f"| {name} | {seed} | {rates[best]:.2f} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    head = (
        f"{a.rates} rates in [0, 0.9], MLP [128, 128], {a.epochs} epochs, {K}-fold CV, "
        f"{a.seeds} seeds; {time.perf_counter() - t0:.0f} s\n\n"
        "| data | seed | grid best | " + " | ".join(RULES) + " |\n"
        "|---|---|---|" + "---|" * len(RULES) + "\n"
    )
    summary = (
        "\n\n| rule | answer within 1 SE of the grid's best | member-epochs (median share) |\n"
        "|---|---|---|\n"
        + "\n".join(
            f"| {r} | {right[r]}/{runs} | {statistics.median(spent[r]):.0%} |" for r in RULES
        )
        + "\n"
    )
    table = head + "\n".join(lines) + summary
    print("\n" + table)
    if a.out:
        a.out.write_text(table)


if __name__ == "__main__":
    main()
