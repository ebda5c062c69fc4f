"""How many trials does each sampler need before droptune's answer is as good as a dense grid's?

    .venv/bin/python bench/bench_sampler.py [--seeds 5] [--cap 30] [--out bench/results/sampler.md]

No service: droptune's own sampler code (`worker.objective`: `make_sampler` rebuilt per batch,
`new_trial`, `suggest`) on an in-memory Optuna study, and every proposed rate trained for real by
the engine, in batches of 4 as a worker trains them. The engine gives every trial the same
initial weights, batches and dropout uniforms per fold (common random numbers), so a rate's
scores are a function of the rate alone: the dense grid and the samplers see the same function,
and caching a score by its exact rate (the samplers share their startup draws; grid points
recur) changes nothing. A nearest-grid-point lookup instead would hand the grid sampler the
exact points it is scored against and the others a staircase, so it is not used.
`check_stacking` shows at the start that a rate scores the same alone and stacked with others.

A run is scored after each trial (in trial order) with the one-SE rule (as `storage.answer`
has it). "Trials needed" is the count from which the answer stays ok up to the cap: its CV mean
within one SE of the dense grid's best (best mean minus the best's std / sqrt(K)), or its rate
within RATE_TOL of the dense grid's own one-SE rate. tpe, gp and random run as a study of `cap`
trials, median over seeds (`search.seed` = 0, 1, ...; folds and initial weights stay fixed).
grid is deterministic (its seed only shuffles the order): the N for which droptune's N-point
grid (linspace over the range) passes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import optuna
import torch
from sklearn import datasets as skdatasets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from droptune.core.spec.search import DEFAULT_DROPOUT_HIGH
from droptune.core.spec.study import StudySpec
from droptune.worker.engine.data import (
    Dataset,
    dataset_from_arrays,
    load_dataset,
    prepare_folds,
    subset,
)
from droptune.worker.engine.kinds import MLPConfig
from droptune.worker.engine.stacked import TrainConfig, TrialRates, train_trials
from droptune.worker.run.objective import make_sampler, new_trial, suggest

K = 5
BATCH = 4  # trials a worker trains together
MODEL = MLPConfig((128, 128))
CFG = TrainConfig(epochs=20, batch_size=64, lr=1e-3, metric="accuracy", seed=0)
DENSE = np.linspace(0.0, DEFAULT_DROPOUT_HIGH, 41)
GRID_SIZES = (3, 5, 8, 11, 16, 21, 30)  # 3, 5, 11 and 21 fall on the dense grid's points
SAMPLERS = ("tpe", "gp", "random")
RATE_TOL = 0.05  # "the same answer": the dense grid's one-SE rate, give or take this
TITLES = {
    "near_best": "**Trials until the answer's CV accuracy stays within one SE of the dense best**",
    "same_rate": f"**Trials until the answer's rate stays within {RATE_TOL} of the dense grid's "
    "one-SE rate**",
}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _digits_subset(n: int, flip: float) -> Dataset:
    """n rows of digits; a `flip` fraction of them relabelled to another class at random."""
    ds = load_dataset("digits")
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(ds.y), n, replace=False))
    y = ds.y[rows].copy()
    noisy = rng.random(n) < flip
    y[noisy] = (y[noisy] + rng.integers(1, 10, noisy.sum())) % 10
    return dataset_from_arrays(subset(ds, rows).X, y)


def _noisy_binary() -> Dataset:
    X, y = skdatasets.make_classification(
        n_samples=500,
        n_features=40,
        n_informative=8,
        n_redundant=0,
        flip_y=0.3,
        random_state=0,
    )
    return dataset_from_arrays(X, y)


DATASETS: dict[str, Callable[[], Dataset]] = {
    "breast_cancer": lambda: load_dataset("breast_cancer"),
    "digits600": lambda: _digits_subset(600, 0.0),
    "digits600_flip30": lambda: _digits_subset(600, 0.3),
    "noisy_binary": _noisy_binary,
}


@dataclass(frozen=True)
class Result:
    number: int
    rate: float
    folds: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.folds)

    @property
    def se(self) -> float:
        return statistics.stdev(self.folds) / math.sqrt(len(self.folds))


class Scorer:
    """Trains rates on one data set's folds; a rate already trained is looked up (same score)."""

    def __init__(self, ds: Dataset) -> None:
        self.data = prepare_folds(ds, K, CFG.seed)
        self.cache: dict[float, tuple[float, ...]] = {}
        self.trained = 0

    def folds(self, rates: list[float]) -> list[tuple[float, ...]]:
        todo = sorted({float(r) for r in rates} - set(self.cache))
        if todo:
            res = train_trials(self.data, MODEL, CFG, [TrialRates((r,)) for r in todo])
            self.cache |= {r: tuple(x.fold_scores) for r, x in zip(todo, res, strict=True)}
            self.trained += len(todo)
        return [self.cache[float(r)] for r in rates]


def check_stacking(scorer: Scorer) -> float:
    """Largest fold-score difference of rate 0.3 trained alone vs stacked with three others."""
    alone = train_trials(scorer.data, MODEL, CFG, [TrialRates((0.3,))])[0].fold_scores
    mixed = train_trials(scorer.data, MODEL, CFG, [TrialRates((r,)) for r in (0.7, 0.3, 0.1)])
    return float(np.max(np.abs(np.subtract(alone, mixed[1].fold_scores))))


def one_se(results: list[Result]) -> Result:
    """storage.answer's rule: the best mean (earliest on ties), then the largest rate (earliest
    on ties) whose mean is within the best's std / sqrt(K)."""
    best = max(results, key=lambda r: (r.mean, -r.number))
    within = [r for r in results if r.mean >= best.mean - best.se - 1e-12]
    return max(within, key=lambda r: (r.rate, -r.number))


def scored(rates: list[float], folds: list[tuple[float, ...]]) -> list[Result]:
    return [Result(i, float(r), f) for i, (r, f) in enumerate(zip(rates, folds, strict=True))]


@dataclass(frozen=True)
class Target:
    """What the dense grid says: its best, and its own one-SE answer."""

    best: Result
    answer: Result

    def near_best(self, answer: Result) -> bool:
        """The answer's CV mean is within one SE of the dense grid's best."""
        return answer.mean >= self.best.mean - self.best.se - 1e-12

    def same_rate(self, answer: Result) -> bool:
        """The answer's rate is within RATE_TOL of the dense grid's one-SE rate."""
        return abs(answer.rate - self.answer.rate) <= RATE_TOL + 1e-9


CRITERIA: dict[str, Callable[[Target, Result], bool]] = {
    "near_best": Target.near_best,
    "same_rate": Target.same_rate,
}


def passes(history: list[Result], ok: Callable[[Result], bool]) -> list[bool]:
    """Whether the answer is ok after 1, 2, ... trials (in trial order)."""
    return [ok(one_se(history[:t])) for t in range(1, len(history) + 1)]


def trials_needed(curve: list[bool]) -> int | None:
    """The trial count from which the answer stays ok; None: not by the end of the curve."""
    needed = None
    for t in range(len(curve), 0, -1):
        if not curve[t - 1]:
            break
        needed = t
    return needed


def search_spec(sampler: str, seed: int, cap: int) -> StudySpec:
    """A spec for its search section only (the data set named is not the one trained)."""
    return StudySpec.model_validate(
        {
            "dataset": {"builtin": "iris"},
            "search": {"sampler": sampler, "seed": seed, "n_trials": cap, "pruner": "none"},
        }
    )


def simulate(scorer: Scorer, sampler: str, seed: int, cap: int) -> tuple[list[Result], float]:
    """A study of `cap` trials as one worker runs it: a new sampler per batch of BATCH trials,
    all of a batch RUNNING while the next is suggested, then trained together and told. Also
    returns the seconds spent suggesting."""
    spec = search_spec(sampler, seed, cap)
    study = optuna.create_study(direction="maximize")
    out: list[Result] = []
    suggesting = 0.0
    while len(out) < cap:
        t0 = time.perf_counter()
        study.sampler = make_sampler(spec, len(study.trials))
        trials = [new_trial(study, None, {}) for _ in range(min(BATCH, cap - len(out)))]
        rates = [suggest(t, spec).hidden[0] for t in trials]
        suggesting += time.perf_counter() - t0
        for t, r, f in zip(trials, rates, scorer.folds(rates), strict=True):
            attrs = {"fold_scores": list(f), "score_mean": statistics.fmean(f)}
            for k, v in attrs.items():
                t.set_user_attr(k, v)
            study.tell(t, statistics.fmean(f))
            out.append(Result(t.number, r, f))
    return out, suggesting


def grid_passes(scorer: Scorer, ok: Callable[[Result], bool]) -> list[int]:
    """The N of GRID_SIZES whose full N-point grid (droptune's: linspace over the range)
    passes."""
    out = []
    for n in GRID_SIZES:
        rates = np.linspace(0.0, DEFAULT_DROPOUT_HIGH, n).round(6).tolist()
        if ok(one_se(scored(rates, scorer.folds(rates)))):
            out.append(n)
    return out


@dataclass
class Row:
    dataset: str
    target: Target
    within: float  # fraction of the dense grid's rates within one SE of its best
    curves: dict[str, dict[str, list[list[bool]]]]  # criterion -> sampler -> seed -> passes
    grid: dict[str, list[int]]  # criterion -> the grid sizes that pass
    suggest_seconds: dict[str, float]  # sampler -> seconds suggesting per trial


def run_dataset(name: str, seeds: int, cap: int) -> Row:
    t0 = time.perf_counter()
    scorer = Scorer(DATASETS[name]())
    dense = scored(list(DENSE), scorer.folds(list(DENSE)))
    target = Target(max(dense, key=lambda r: (r.mean, -r.number)), one_se(dense))
    timed = {s: [simulate(scorer, s, seed, cap) for seed in range(seeds)] for s in SAMPLERS}
    runs = {s: [h for h, _ in timed[s]] for s in SAMPLERS}
    per_trial = {s: sum(x for _, x in timed[s]) / (seeds * cap) for s in SAMPLERS}
    curves = {
        c: {s: [passes(h, partial(ok, target)) for h in runs[s]] for s in SAMPLERS}
        for c, ok in CRITERIA.items()
    }
    grid = {c: grid_passes(scorer, partial(ok, target)) for c, ok in CRITERIA.items()}
    within = sum(target.near_best(r) for r in dense) / len(dense)
    secs = time.perf_counter() - t0
    print(f"  {name}: {scorer.trained} rates trained in {secs:.0f} s", file=sys.stderr)
    return Row(name, target, within, curves, grid, per_trial)


def _median(xs: list[int | None], cap: int) -> str:
    m = statistics.median(cap + 1 if x is None else x for x in xs)
    return f">{cap}" if m > cap else f"{m:g}"


def _cell(xs: list[int | None], cap: int) -> str:
    each = ", ".join(f">{cap}" if x is None else str(x) for x in xs)
    return f"{_median(xs, cap)} ({each})"


def table(rows: list[Row], criterion: str, cap: int) -> str:
    head = "| data set | dense best (rate, acc) | dense one-SE rate | within 1 SE | "
    head += " | ".join(SAMPLERS) + " | grid: smallest N (all N that pass) |"
    lines = [head, "|---" * (5 + len(SAMPLERS)) + "|"]
    for r in rows:
        cells = " | ".join(
            _cell([trials_needed(c) for c in r.curves[criterion][s]], cap) for s in SAMPLERS
        )
        ns = r.grid[criterion]
        grid = f"{ns[0]} ({', '.join(map(str, ns))})" if ns else f">{GRID_SIZES[-1]}"
        best = r.target.best
        lines.append(
            f"| {r.dataset} | {best.rate:.3f}, {best.mean:.4f} | {r.target.answer.rate:.3f} "
            f"| {r.within:.0%} | {cells} | {grid} |"
        )
    return "\n".join(lines)


def budgets(cap: int) -> list[int]:
    return [b for b in (4, 8, 12, 20) if b < cap] + [cap]


def budget_title(cap: int) -> str:
    return (
        "**Seeds whose answer is within one SE of the dense best after "
        + " / ".join(map(str, budgets(cap)))
        + " trials**"
    )


def budget_table(rows: list[Row], cap: int) -> str:
    lines = ["| data set | " + " | ".join(SAMPLERS) + " |", "|---" * (1 + len(SAMPLERS)) + "|"]
    for r in rows:
        cells = []
        for s in SAMPLERS:
            runs = r.curves["near_best"][s]
            cells.append(" / ".join(str(sum(c[b - 1] for c in runs)) for b in budgets(cap)))
        lines.append(f"| {r.dataset} | " + " | ".join(cells) + " |")
    secs = [statistics.fmean(r.suggest_seconds[s] for r in rows) for s in SAMPLERS]
    lines.append("| seconds suggesting a trial | " + " | ".join(f"{x:.3f}" for x in secs) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--cap", type=int, default=30)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    names = args.datasets.split(",")
    drift = check_stacking(Scorer(DATASETS[names[0]]()))
    print(f"  stacking check ({names[0]}): max |alone - stacked| = {drift:g}", file=sys.stderr)
    rows = [run_dataset(n, args.seeds, args.cap) for n in names]
    out = "\n\n".join(f"{TITLES[c]}\n\n{table(rows, c, args.cap)}" for c in CRITERIA)
    out += f"\n\n{budget_title(args.cap)}\n\n{budget_table(rows, args.cap)}"
    print(out)
    if args.out:
        args.out.write_text(report(out, args, drift, time.perf_counter() - t0))


def report(out: str, args: argparse.Namespace, drift: float, secs: float) -> str:
    cmd = " ".join(["python", *sys.argv])
    cpu = time.process_time()
    return f"""# Samplers: trials until the answer is within one SE of a dense grid's best

{dt.date.today().isoformat()}, `{cmd}`, torch {torch.__version__}, optuna {optuna.__version__},
CPU, {args.threads} thread(s), {secs / 60:.1f} min in all ({cpu / 60:.1f} min of CPU).

In the first two tables a sampler's cell is the median over search seeds 0..{args.seeds - 1}
of the number of trials from which the one-SE answer stays ok (the first table: its CV accuracy
>= the dense grid's best minus the best's SE; the second: its rate within {RATE_TOL} of the
dense grid's one-SE rate), to a cap of {args.cap} trials (each seed's count in brackets). The
third counts the seeds whose answer is ok (first table's sense) at a few budgets: it is not
monotone, as a luckier best found later moves the one-SE threshold. Dense grid: {len(DENSE)}
rates over [0, {DEFAULT_DROPOUT_HIGH}]. MLP {list(MODEL.hidden)}, {CFG.epochs} epochs, batch
{CFG.batch_size}, Adam {CFG.lr}, {K}-fold CV, accuracy, no pruner, batches of {BATCH} trials with
a new sampler per batch (as a worker runs them). "within 1 SE" is the share of the dense grid
that passes the first test: the flatter the curve, the easier the target. grid: the N in
{list(GRID_SIZES)} whose N-point grid passes. "seconds suggesting a trial": building the
sampler, creating and suggesting, per trial, mean over data sets.

A rate scored the same alone and stacked with others (max difference {drift:g}), so training
each proposal in its own batch of {BATCH} and caching by exact rate is the same as a real run.

{out}
"""


if __name__ == "__main__":
    main()
