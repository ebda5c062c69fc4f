"""The plain script bench/bench_study.py times droptune against: what a user writes with Optuna.

    .venv/bin/python bench/plain_optuna.py [--threads N]   # prints its result as one JSON line

`optuna.create_study` with the optuna strategy's TPE start-up count and median pruner over
bench_engine.py's per-fold nn.Module loop, 20 trials, on the same 80% of digits and the same folds
as droptune's default study, reporting the mean fold accuracy every epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_cases import _baseline_net

from droptune.core.spec.study import StudySpec
from droptune.worker.engine.data import Dataset, holdout_split, load_dataset, make_folds, subset
from droptune.worker.engine.kinds import MLPConfig
from droptune.worker.engine.stacked import TrainConfig
from droptune.worker.run.objective import make_pruner, n_startup_trials

SPEC: dict[str, Any] = {"dataset": {"builtin": "digits"}}  # droptune's defaults, all of them
PLAIN_SEARCH = {"strategy": "optuna"}  # the plain script's: TPE and the median pruner
HOLDOUT = 0.2  # the default holdout of a data set with >= 500 rows (checked against the study)


@dataclass
class _Fold:
    net: nn.Module
    opt: torch.optim.Optimizer
    loader: DataLoader[Any]
    x_va: torch.Tensor
    y_va: torch.Tensor


def _fold(ds: Dataset, tr: np.ndarray, va: np.ndarray, p: float, cfg: TrainConfig) -> _Fold:
    """bench_engine.baseline_trial's set-up of one fold: a scaler fitted on the training part,
    a fresh MLP, Adam, a shuffling DataLoader."""
    scaler = StandardScaler().fit(ds.X[tr])
    x_tr = torch.tensor(scaler.transform(ds.X[tr]), dtype=torch.float32)
    x_va = torch.tensor(scaler.transform(ds.X[va]), dtype=torch.float32)
    net = _baseline_net(MLPConfig((256, 256)), ds, p)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    data = TensorDataset(x_tr, torch.tensor(ds.y[tr]))
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True)
    return _Fold(net, opt, loader, x_va, torch.tensor(ds.y[va]))


def _epoch(f: _Fold) -> float:
    """Train one epoch, then the validation accuracy."""
    f.net.train()
    for xb, yb in f.loader:
        f.opt.zero_grad()
        loss = nn.functional.cross_entropy(f.net(xb), yb)
        loss.backward()  # type: ignore[no-untyped-call]
        f.opt.step()
    f.net.eval()
    with torch.no_grad():
        return float((f.net(f.x_va).argmax(1) == f.y_va).float().mean().item())


def plain(threads: int) -> dict[str, Any]:
    """The script: 20 trials of per-fold training, the mean fold score reported every epoch."""
    torch.set_num_threads(threads)
    spec = StudySpec.model_validate({**SPEC, "search": PLAIN_SEARCH})
    s, tr = spec.search, spec.training
    cfg = TrainConfig(epochs=tr.epochs, batch_size=tr.batch_size, lr=tr.lr, seed=spec.cv.seed)
    full = load_dataset("digits")
    ds = subset(full, holdout_split(full.y, HOLDOUT, spec.cv.seed)[0])
    splits = make_folds(ds.y, spec.cv.folds, spec.cv.seed)

    def objective(trial: optuna.Trial) -> float:
        p = trial.suggest_float("dropout", s.dropout_low, s.dropout_high)
        torch.manual_seed(cfg.seed)
        folds = [_fold(ds, a, b, p, cfg) for a, b in splits]
        for epoch in range(1, cfg.epochs + 1):
            scores = [_epoch(f) for f in folds]
            trial.report(float(np.mean(scores)), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        trial.set_user_attr("folds", scores)
        return float(np.mean(scores))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(n_startup_trials=n_startup_trials(spec), seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=make_pruner(spec))
    t1, c1 = time.perf_counter(), time.process_time()
    study.optimize(objective, n_trials=s.n_trials)
    best = study.best_trial
    return {
        "optimize_s": time.perf_counter() - t1,
        "optimize_cpu_s": time.process_time() - c1,
        "rate": best.params["dropout"],
        "score": best.value,
        "se": float(np.std(best.user_attrs["folds"], ddof=1) / np.sqrt(len(splits))),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "epochs": sum(len(t.intermediate_values) for t in study.trials),
        "rows": len(ds.y),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    print(json.dumps(plain(ap.parse_args().threads)))


if __name__ == "__main__":
    main()
