"""Does droptune's default dropout range reach the best rate? Re-measures `dropout_high`.

    .venv/bin/python bench/bench_range.py [--seeds 5] [--out bench/results/range.md]

droptune's default model (MLP [256, 256], Adam 1e-3, 20 epochs, batch 64) at rates 0, 0.1, ...,
0.8, 0.85, 0.9, 0.95 on a clean problem (digits) and two noisy-label ones. Each seed holds out a
quarter of the rows (stratified), runs 5-fold CV on the rest, and refits every rate on all the
rest to score the held-out rows; the seed also sets the folds, the initial weights and the
masks. Accuracy and log loss come from the same trained members. Reported: the mean over seeds
of the CV mean and of the held-out score per rate, and per seed which rate is best by CV, by the
one-SE rule and on the held-out rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn import datasets as skdatasets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from droptune.worker.engine.data import (
    Dataset,
    FoldData,
    dataset_from_arrays,
    fold_data,
    holdout_split,
    load_dataset,
    make_folds,
    subset,
)
from droptune.worker.engine.kinds import MLPConfig
from droptune.worker.engine.stacked import TrainConfig, TrialRates, fit

K = 5
HOLDOUT = 0.25
RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
MODEL = MLPConfig((256, 256))
EPOCHS, BATCH, LR = 20, 64, 1e-3
METRICS = ("accuracy", "log_loss")


def _flip(ds: Dataset, fraction: float) -> Dataset:
    """The data set with a `fraction` of its labels moved to another class at random."""
    rng = np.random.default_rng(0)
    y = ds.y.copy()
    noisy = rng.random(len(y)) < fraction
    y[noisy] = (y[noisy] + rng.integers(1, ds.n_classes, noisy.sum())) % ds.n_classes
    return dataset_from_arrays(ds.X, y)


def _noisy_synthetic() -> Dataset:
    X, y = skdatasets.make_classification(
        n_samples=600,
        n_features=50,
        n_informative=10,
        n_redundant=0,
        n_clusters_per_class=1,
        class_sep=1.5,
        flip_y=0.3,
        random_state=0,
    )
    return dataset_from_arrays(X, y)


DATASETS: dict[str, tuple[str, Callable[[], Dataset]]] = {
    "digits": ("clean: 1797 x 64, 10 classes", lambda: load_dataset("digits")),
    "digits_flip30": (
        "digits with 30% of labels moved to another class",
        lambda: _flip(load_dataset("digits"), 0.3),
    ),
    "noisy_synthetic": (
        "make_classification 600 x 50, 10 informative, one cluster a class, class_sep 1.5, "
        "flip_y 0.3 (about 15% wrong labels)",
        _noisy_synthetic,
    ),
}


@dataclass
class Seeded:
    """One seed's scores: metric -> [rates, folds] (CV) and metric -> [rates] (held out)."""

    cv: dict[str, np.ndarray]
    held_out: dict[str, np.ndarray]


def scores(data: FoldData, cfg: TrainConfig) -> dict[str, np.ndarray]:
    """Train every rate on every split of `data`; each metric's scores [rates, splits]."""
    _, run = fit(data, MODEL, cfg, [TrialRates((r,)) for r in RATES])
    return {m: run.scores(m) for m in METRICS}


def run_seed(ds: Dataset, seed: int) -> Seeded:
    cfg = TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=seed)
    search, test = holdout_split(ds.y, HOLDOUT, seed)
    inner = subset(ds, search)
    cv_folds = make_folds(inner.y, K, seed)
    cv = scores(fold_data(inner, cv_folds)[0], cfg)
    held = scores(fold_data(ds, [(search, test)])[0], cfg)
    return Seeded(cv, {m: held[m][:, 0] for m in METRICS})


def better(metric: str) -> int:
    return -1 if metric == "log_loss" else 1


def one_se(folds: np.ndarray, metric: str) -> int:
    """Index of the largest rate whose CV mean is within the best's std / sqrt(K)."""
    sign = better(metric)
    mean = sign * folds.mean(axis=1)
    b = int(np.argmax(mean))
    se = folds[b].std(ddof=1) / math.sqrt(folds.shape[1])
    return int(np.flatnonzero(mean >= mean[b] - se - 1e-12).max())


@dataclass
class Summary:
    name: str
    what: str
    seeds: list[Seeded] = field(default_factory=list)
    seconds: float = 0.0


def rate_table(s: Summary, metric: str) -> str:
    cv = np.stack([x.cv[metric] for x in s.seeds])  # [seeds, rates, folds]
    held = np.stack([x.held_out[metric] for x in s.seeds])  # [seeds, rates]
    se = cv.std(axis=2, ddof=1) / math.sqrt(K)
    lines = [
        f"| rate | CV {metric} (mean over seeds) | CV SE (mean) | held-out {metric} |",
        "|---|---|---|---|",
    ]
    for i, r in enumerate(RATES):
        lines.append(
            f"| {r:g} | {cv[:, i].mean():.4f} | {se[:, i].mean():.4f} | {held[:, i].mean():.4f} |"
        )
    return "\n".join(lines)


def chosen(s: Summary, metric: str) -> dict[str, list[float]]:
    """Per seed, the rate picked by CV's best mean, by the one-SE rule and on the held-out rows."""
    sign = better(metric)
    return {
        "best by CV": [RATES[int(np.argmax(sign * x.cv[metric].mean(axis=1)))] for x in s.seeds],
        "one-SE rule": [RATES[one_se(x.cv[metric], metric)] for x in s.seeds],
        "best held out": [RATES[int(np.argmax(sign * x.held_out[metric]))] for x in s.seeds],
    }


def picks(s: Summary, metric: str) -> str:
    return "per seed, " + "; ".join(f"{k}: {v}" for k, v in chosen(s, metric).items())


def summary(rows: list[Summary]) -> str:
    """How often each pick lies above 0.8 and above 0.9, over all seeds."""
    lines = [
        "| data set | metric | pick | max | seeds > 0.8 | seeds > 0.9 |",
        "|---|---|---|---|---|---|",
    ]
    for s in rows:
        for m in METRICS:
            for how, rates in chosen(s, m).items():
                above = [sum(r > cut + 1e-9 for r in rates) for cut in (0.8, 0.9)]
                lines.append(
                    f"| {s.name} | {m} | {how} | {max(rates):g} | {above[0]}/{len(rates)} "
                    f"| {above[1]}/{len(rates)} |"
                )
    return "\n".join(lines)


def section(s: Summary) -> str:
    out = [f"### {s.name}: {s.what} ({s.seconds:.0f} s)"]
    for m in METRICS:
        out += ["", rate_table(s, m), "", picks(s, m)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = []
    for name in args.datasets.split(","):
        what, make = DATASETS[name]
        s = Summary(name, what)
        ds = make()
        t = time.perf_counter()
        s.seeds = [run_seed(ds, seed) for seed in range(args.seeds)]
        s.seconds = time.perf_counter() - t
        rows.append(s)
        print(section(s) + "\n", flush=True)
    body = "\n\n".join(["## Where the picks fall", summary(rows), "## Per rate"])
    body += "\n\n" + "\n\n".join(section(s) for s in rows)
    print(summary(rows))
    if args.out:
        args.out.write_text(report(body, args, time.perf_counter() - t0))


def report(body: str, args: argparse.Namespace, secs: float) -> str:
    cmd = " ".join(["python", *sys.argv])
    return f"""# The default dropout range: is the best rate below 0.8, 0.9, 0.95?

{dt.date.today().isoformat()}, `{cmd}`, torch {torch.__version__}, CPU, {args.threads}
thread(s), {secs / 60:.1f} min in all ({time.process_time() / 60:.1f} min of CPU).

MLP {list(MODEL.hidden)}, Adam {LR}, {EPOCHS} epochs, batch {BATCH}. Seeds 0..{args.seeds - 1}:
each holds out {HOLDOUT:.0%} of the rows (stratified), runs {K}-fold CV on the rest and refits
each rate on all the rest to score the held-out rows. CV SE: a seed's fold std / sqrt({K}),
averaged over seeds.

{body}
"""


if __name__ == "__main__":
    main()
