"""Regression data sets: per-fold standardised targets, scores on the original scale, metrics that
must fit the task, and the same exact-trajectory guarantee as classification."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from droptune.worker.engine.data import FoldData, make_folds
from droptune.worker.engine.kinds import MLPConfig
from droptune.worker.engine.models import StackedMLP
from droptune.worker.engine.sizing import auto_batch_trials, flops_per_trial
from droptune.worker.engine.stacked import (
    METRICS,
    TrainConfig,
    TrialRates,
    epoch_order,
    evaluate,
    make_optimizer,
    metric_direction,
    train_epoch,
    train_trials,
)
from tests.stacking import CPU, check_trajectory, digits3_folds, reg5_folds, regression_arrays


@pytest.fixture(scope="module")
def reg5() -> FoldData:
    return reg5_folds()


@pytest.fixture(scope="module")
def digits3() -> FoldData:
    return digits3_folds()


def test_regression_folds_cover_every_row_once_and_targets_are_standardised_per_fold(
    reg5: FoldData,
) -> None:
    _, y = regression_arrays()
    folds = make_folds(y, 5, 0, "regression")
    again, other = make_folds(y, 5, 0, "regression"), make_folds(y, 5, 1, "regression")
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))
    all_val = np.concatenate([va for _, va in folds])
    assert sorted(all_val.tolist()) == list(range(len(y)))  # every row validated exactly once
    assert reg5.task == "regression" and reg5.n_classes == 1
    assert reg5.y.shape == (5, len(y)) and reg5.y.dtype == torch.float32
    assert reg5.y_shift is not None and reg5.y_scale is not None
    for k, (tr, va) in enumerate(folds):
        assert not set(tr.tolist()) & set(va.tolist()) and len(tr) + len(va) == len(y)
        np.testing.assert_array_equal(reg5.val_idx[k, : reg5.val_len_host[k]].numpy(), va)
        # shift / scale are the training part's mean and (population) std only
        assert float(reg5.y_shift[k]) == pytest.approx(y[tr].mean(), rel=1e-12)
        assert float(reg5.y_scale[k]) == pytest.approx(y[tr].std(), rel=1e-12)
        restored = reg5.y[k].double() * reg5.y_scale[k] + reg5.y_shift[k]
        # float32 standardised targets: exact to float32 rounding in units of the std
        np.testing.assert_allclose(restored.numpy(), y, rtol=0, atol=1e-6 * y.std())
    assert len({round(float(s), 6) for s in reg5.y_shift}) == 5  # folds differ


def test_regression_learns_and_reports_scores_on_the_original_scale(reg5: FoldData) -> None:
    _, y = regression_arrays()
    trials = [TrialRates((0.0,)), TrialRates((0.2,))]
    scores = {}
    for metric in ("rmse", "mae", "r2"):
        cfg = TrainConfig(epochs=10, lr=5e-3, metric=metric)
        res = train_trials(reg5, MLPConfig((32,)), cfg, trials, CPU)
        assert len(res) == 2
        for r in res:
            assert len(r.fold_scores) == 5 and r.epochs_run == 10 and not r.stopped
        scores[metric] = res[0]
    # predicting the mean scores rmse = std(y) (~445); the noise floor is 15
    assert scores["rmse"].mean < 0.2 * y.std()
    assert 0 < scores["mae"].mean < scores["rmse"].mean  # mae <= rmse, per fold too
    mae, rmse = scores["mae"].fold_scores, scores["rmse"].fold_scores
    assert all(m <= r for m, r in zip(mae, rmse, strict=True))
    assert scores["r2"].mean > 0.5 and max(scores["r2"].fold_scores) <= 1.0


def test_regression_metrics_match_sklearn_on_the_original_scale(reg5: FoldData) -> None:
    _, y = regression_arrays()
    net = StackedMLP(7, 10, (16,), 1, generator=torch.Generator().manual_seed(0))
    # some training so predictions are neither trivial nor the mean
    fold_of = torch.tensor([0, 1, 2, 3, 4, 0, 3])
    lens = [reg5.train_len_host[f] for f in fold_of.tolist()]
    opt = make_optimizer(net, TrainConfig(lr=1e-2, batch_size=64), lens)
    train_epoch(net, opt, reg5, fold_of, epoch_order(reg5, torch.Generator()), 64, lens)
    assert reg5.y_scale is not None and reg5.y_shift is not None
    net.eval()
    expected: dict[str, list[float]] = {"rmse": [], "mae": [], "r2": []}
    with torch.no_grad():
        for m, k in enumerate(fold_of.tolist()):
            va = reg5.val_idx[k, : reg5.val_len_host[k]]
            pred = net.export_member(m).eval()(reg5.X_std[k, va])[:, 0].double()
            pred = (pred * reg5.y_scale[k] + reg5.y_shift[k]).numpy()
            expected["rmse"].append(float(np.sqrt(mean_squared_error(y[va], pred))))
            expected["mae"].append(mean_absolute_error(y[va], pred))
            expected["r2"].append(r2_score(y[va], pred))
    for metric, want in expected.items():
        got = evaluate(net, reg5, fold_of, metric)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, err_msg=metric)
        chunked = evaluate(net, reg5, fold_of, metric, max_rows=200)  # 1 member per chunk
        torch.testing.assert_close(chunked, got)
    assert 0 < min(expected["r2"]) < 0.99  # a meaningful check, not a perfect or useless fit


def test_stacked_regression_mlp_follows_standalone_adam_exactly(reg5: FoldData) -> None:
    # dropout 0; batches of 241: 482-row folds take 2 steps and 483-row folds 3, so MemberAdam
    # runs, and the weighted tail of one row is exercised
    folds = [0, 1, 2, 3, 4, 3]
    stacked = StackedMLP(len(folds), 10, (16, 8), 1, generator=torch.Generator().manual_seed(5))
    start = [w.detach().clone() for w in stacked.parameters()]
    check_trajectory(stacked, reg5, folds, bs=241, epochs=3)
    for before, after in zip(start, stacked.parameters(), strict=True):
        assert float((before - after.detach()).abs().max()) > 1e-3


def test_metric_must_fit_the_task(reg5: FoldData, digits3: FoldData) -> None:
    trial = [TrialRates((0.1,))]
    for metric in ("accuracy", "log_loss"):
        with pytest.raises(ValueError, match="does not fit a regression data set"):
            train_trials(reg5, MLPConfig((8,)), TrainConfig(epochs=1, metric=metric), trial)
    for metric in ("rmse", "mae", "r2"):
        with pytest.raises(ValueError, match="does not fit a classification data set"):
            train_trials(digits3, MLPConfig((8,)), TrainConfig(epochs=1, metric=metric), trial)
    net = StackedMLP(1, 10, (8,), 1)
    with pytest.raises(ValueError, match="does not fit"):
        evaluate(net, reg5, torch.tensor([0]), "accuracy")


def test_metric_direction() -> None:
    assert set(METRICS) == {"accuracy", "log_loss", "rmse", "mae", "r2"}
    assert {m: metric_direction(m) for m in METRICS} == {
        "accuracy": "maximize",
        "log_loss": "minimize",
        "rmse": "minimize",
        "mae": "minimize",
        "r2": "maximize",
    }
    with pytest.raises(ValueError, match="metric"):
        metric_direction("f1")


def test_sizing_with_one_output(reg5: FoldData) -> None:
    cfg = TrainConfig(epochs=2)
    f = flops_per_trial(MLPConfig((10,)), reg5, cfg)
    per_sample = 2 * (10 * 10 + 10 * 1)
    assert f == pytest.approx(2 * per_sample * (3 * 4 * 603 + 603))
    assert 1 <= auto_batch_trials(MLPConfig(), reg5, 100, CPU) <= 16
