"""Helpers shared by the stacked-engine tests (test_engine.py, test_regression.py): the data
sets they train on, and the check that a stacked network follows standalone Adam exactly."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import make_regression
from torch import nn

from droptune.worker.engine.data import FoldData, dataset_from_arrays, load_dataset, prepare_folds
from droptune.worker.engine.models import StackedCNN, StackedMLP
from droptune.worker.engine.stacked import TrainConfig, epoch_order, make_optimizer, train_epoch

CPU = torch.device("cpu")


def digits3_folds() -> FoldData:
    return prepare_folds(load_dataset("digits"), 3, 0, CPU)


def regression_arrays() -> tuple[np.ndarray, np.ndarray]:
    # a linear target + noise (std 15), far from zero: scores must come back on this scale
    X, y = make_regression(n_samples=603, n_features=10, n_informative=6, noise=5.0, random_state=0)
    return X, 3.0 * y + 1000.0


def reg5_folds() -> FoldData:
    # 603 rows in 5 folds: training parts of 482 and 483 rows (2 and 3 steps of 241)
    X, y = regression_arrays()
    return prepare_folds(dataset_from_arrays(X, y, task="regression"), 5, 0, CPU)


def standalone_epoch(
    net: nn.Module, opt: torch.optim.Optimizer, data: FoldData, k: int, order: torch.Tensor, bs: int
) -> None:
    """The textbook loop, fed exactly the batches the engine gives member m (fold k)."""
    net.train()
    n = data.train_len_host[k]
    for start in range(0, n, bs):
        idx = order[k, start : min(start + bs, n)]
        opt.zero_grad()
        if data.task == "regression":  # the fold's standardised targets, one output
            loss = nn.functional.mse_loss(net(data.X_std[k, idx])[:, 0], data.y[k, idx])
        else:
            loss = nn.functional.cross_entropy(net(data.X_std[k, idx]), data.y[idx])
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()


def check_trajectory(
    stacked: StackedMLP | StackedCNN,
    data: FoldData,
    folds: list[int],
    bs: int,
    epochs: int,
    wd: float = 0.0,
) -> None:
    singles = [stacked.export_member(m) for m in range(len(folds))]
    for m, single in enumerate(singles):
        for (w, b), mod in zip(stacked.member_state(m), weighted(single), strict=True):
            torch.testing.assert_close(w, mod.weight, rtol=0, atol=0)
            assert mod.bias is not None
            torch.testing.assert_close(b, mod.bias, rtol=0, atol=0)
    lens = [data.train_len_host[f] for f in folds]
    opt = make_optimizer(stacked, TrainConfig(lr=3e-3, batch_size=bs, weight_decay=wd), lens)
    opts = [torch.optim.Adam(s.parameters(), lr=3e-3, weight_decay=wd) for s in singles]
    fold_of = torch.tensor(folds)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = epoch_order(data, gen)
        train_epoch(stacked, opt, data, fold_of, order, bs, lens)
        for single, sopt, k in zip(singles, opts, folds, strict=True):
            standalone_epoch(single, sopt, data, k, order, bs)
    for m, single in enumerate(singles):
        for (w, b), mod in zip(stacked.member_state(m), weighted(single), strict=True):
            torch.testing.assert_close(w, mod.weight, rtol=0, atol=2e-5)
            assert mod.bias is not None
            torch.testing.assert_close(b, mod.bias, rtol=0, atol=2e-5)
    single_eval = singles[0].eval()
    stacked.eval()
    x = data.X_std[folds[0], :50]
    with torch.no_grad():
        out = stacked(x.expand(len(folds), *x.shape).contiguous())[0]
        torch.testing.assert_close(out, single_eval(x), rtol=0, atol=1e-4)


def weighted(net: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
