"""Repeated folds, the held-out split, held-out scores with their intervals, and the exported
model (its outputs equal the trained member's; it loads with torch alone)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from droptune.worker.engine.data import (
    dataset_from_arrays,
    fold_data,
    holdout_split,
    load_dataset,
    make_folds,
)
from droptune.worker.engine.kinds import CNNConfig, MLPConfig
from droptune.worker.engine.preprocess import tabular_preprocessor
from droptune.worker.engine.stacked import TrainConfig, TrialRates, fit
from droptune.worker.run import heldout
from droptune.worker.run.export import META, PREPROCESS, export_program, take_home_module
from droptune.worker.run.refit import predictions


def test_repeats_give_r_times_k_distinct_splits_and_repeat_zero_is_plain_kfold() -> None:
    y = np.repeat(np.arange(3), 20)
    plain = make_folds(y, 5, 7)
    rep = make_folds(y, 5, 7, repeats=3)
    assert len(rep) == 15
    for (a, b), (c, d) in zip(plain, rep[:5], strict=True):
        assert np.array_equal(a, c) and np.array_equal(b, d)
    vals = {tuple(va) for _, va in rep}
    assert len(vals) == 15  # every split differs
    for r in range(3):  # each repeat covers every row exactly once
        covered = np.sort(np.concatenate([va for _, va in rep[5 * r : 5 * r + 5]]))
        assert np.array_equal(covered, np.arange(60))
    again = make_folds(y, 5, 7, repeats=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(rep, again, strict=True))


def test_holdout_is_stratified_seeded_and_disjoint() -> None:
    y = np.repeat(np.arange(2), [80, 20])
    tr, te = holdout_split(y, 0.2, 3)
    assert len(te) == 20 and np.bincount(y[te]).tolist() == [16, 4]
    assert not set(tr) & set(te) and len(tr) + len(te) == 100
    _, te2 = holdout_split(y, 0.2, 3)
    assert np.array_equal(te, te2)
    assert not np.array_equal(te, holdout_split(y, 0.2, 4)[1])


def test_wilson_interval_matches_its_formula_and_scipy_bounds() -> None:
    lo, hi = heldout.wilson(45, 50)
    p, n, z = 0.9, 50, stats.norm.ppf(0.975)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (lo, hi) == pytest.approx((centre - half, centre + half))
    assert heldout.wilson(0, 10)[0] == 0.0
    assert heldout.wilson(10, 10)[1] == pytest.approx(1.0)


@pytest.mark.parametrize("metric", ["log_loss", "rmse", "mae", "r2"])
def test_bootstrap_interval_brackets_the_score(metric: str) -> None:
    rng = np.random.default_rng(0)
    y: np.ndarray = rng.normal(size=200)
    out = y + rng.normal(size=200) * 0.5
    if metric == "log_loss":
        out, y = rng.normal(size=(200, 3)), rng.integers(0, 3, 200)
    s = heldout.score(metric, out, y)
    lo, hi = heldout.ci95(metric, out, y)
    assert lo < s < hi
    assert (lo, hi) == heldout.ci95(metric, out, y)  # seeded


def _load(data: bytes) -> tuple[torch.nn.Module, dict[str, str]]:
    extra = {META: "", PREPROCESS: ""}
    program = torch.export.load(io.BytesIO(data), extra_files=extra)
    return program.module(), extra


@pytest.mark.parametrize("kind", ["mlp", "cnn", "regression"])
def test_exported_program_equals_the_trained_member_on_raw_features(kind: str) -> None:
    if kind == "regression":
        rng = np.random.default_rng(1)
        X = rng.normal(size=(120, 5)) * 10 + 3
        ds = dataset_from_arrays(X, X @ rng.normal(size=5) + 100, task="regression")
    else:
        ds = load_dataset("digits")
    rows = np.arange(len(ds.y))
    data, fitted = fold_data(ds, [(rows[:-40], rows[-40:])])
    cfg = CNNConfig(channels=(4,), hidden=16) if kind == "cnn" else MLPConfig(hidden=(16,))
    metric = "rmse" if kind == "regression" else "accuracy"
    rates = [TrialRates((0.3,)), TrialRates((0.0,))]
    _, run = fit(data, cfg, TrainConfig(epochs=2, metric=metric), rates)
    expected = predictions(run, data)  # what the refit scores
    shift = float(data.y_shift[0]) if data.y_shift is not None else 0.0
    scale = float(data.y_scale[0]) if data.y_scale is not None else 1.0
    for m in range(2):
        module = take_home_module(run.net, m, fitted[0], shift, scale)
        blob = export_program(module, data.n_features, {"member": m}, fitted[0])
        loaded, extra = _load(blob)
        assert json.loads(extra[META]) == {"member": m} and extra[PREPROCESS] == ""
        raw = torch.tensor(np.asarray(ds.X)[rows[-40:]], dtype=torch.float32)
        with torch.no_grad():
            got = loaded(raw).double().numpy()
        np.testing.assert_allclose(got, expected[m], rtol=1e-4, atol=1e-4)


def test_a_table_ships_its_column_transformer_inside_the_file() -> None:
    import skops.io

    rng = np.random.default_rng(2)
    df = pd.DataFrame(
        {"x": rng.normal(size=60), "colour": rng.choice(["red", "green"], 60)},
    )
    ds = dataset_from_arrays(
        df, rng.integers(0, 2, 60), preprocess=lambda: tabular_preprocessor(["x"], ["colour"], [])
    )
    rows = np.arange(60)
    data, fitted = fold_data(ds, [(rows[:40], rows[40:])])
    _, run = fit(data, MLPConfig(hidden=(8,)), TrainConfig(epochs=1), [TrialRates((0.2,))])
    module = take_home_module(run.net, 0, fitted[0], 0.0, 1.0)
    loaded, extra = _load(export_program(module, data.n_features, {}, fitted[0]))
    blob = base64.b64decode(extra[PREPROCESS])
    transformer = skops.io.loads(blob, trusted=skops.io.get_untrusted_types(data=blob))
    z = torch.tensor(transformer.transform(df.iloc[40:]), dtype=torch.float32)
    with torch.no_grad():
        got = loaded(z).double().numpy()
    np.testing.assert_allclose(got, predictions(run, data)[0], atol=1e-4)


def test_pruning_spares_a_trial_level_with_the_finished_ones() -> None:
    from optuna.trial import create_trial

    from droptune.worker.run.objective import level_with, median_at

    done = [create_trial(value=v, intermediate_values={3: v}) for v in (0.95, 0.96, 0.97)]
    assert median_at(done, 3) == 0.96 and median_at(done, 4) is None
    close = np.array([0.96, 0.955, 0.965, 0.95, 0.962])  # mean 0.9584, SE 0.0027
    far = close - 0.05
    assert level_with(close, 0.96, maximize=True)
    assert not level_with(far, 0.96, maximize=True)
    assert level_with(far, 0.96, maximize=False)  # a loss: lower is better
    assert not level_with(close, None, maximize=True)  # nothing finished yet: the pruner decides
    assert not level_with(np.array([0.9]), 0.96, maximize=True)  # one split: no standard error


def test_a_table_subset_by_the_holdout_preprocesses() -> None:
    """pandas 3 hands out read-only arrays for row subsets: converting them must copy."""
    rng = np.random.default_rng(3)
    df = pd.DataFrame(
        {"pen": pd.Series(rng.choice(["a", "b"], 50), dtype=object), "x": rng.normal(size=50)}
    )
    df.loc[3, "x"] = np.nan
    part = df.iloc[np.arange(40)]
    t = tabular_preprocessor(["x"], ["pen"], ["x"]).fit(part.iloc[np.arange(30)])
    assert t.transform(part).shape == (40, 4)


def test_a_baseline_that_beats_the_recommended_rate_is_a_warning() -> None:
    from droptune.core.schemas import TestPoint, TestScore
    from droptune.core.spec.study import StudySpec
    from droptune.storage.readmodel.reads import baseline_warning

    spec = StudySpec.model_validate({"dataset": {"builtin": "wine"}})
    test = TestScore(
        dropout=0.6, score=0.84, ci95=[0.78, 0.89], n=200, source="holdout", metric="accuracy"
    )
    assert baseline_warning(test, spec) is None  # no baseline
    worse = TestPoint(dropout=0.0, score=0.80, ci95=[0.74, 0.85])
    assert baseline_warning(test.model_copy(update={"baseline": worse}), spec) is None
    close = TestPoint(dropout=0.0, score=0.86, ci95=[0.80, 0.90])
    got = baseline_warning(test.model_copy(update={"baseline": close}), spec)
    assert got is not None and "did not help" in got
    far = TestPoint(dropout=0.0, score=0.95, ci95=[0.91, 0.97])
    got = baseline_warning(test.model_copy(update={"baseline": far}), spec)
    assert got is not None and "dropout hurts here" in got
