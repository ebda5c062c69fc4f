"""Per-fold preprocessing: transformers fitted on each fold's training rows only, never more."""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.compose import ColumnTransformer

from droptune.worker.engine.data import (
    Dataset,
    dataset_from_arrays,
    load_dataset,
    make_folds,
    prepare_folds,
)
from droptune.worker.engine.kinds import MLPConfig
from droptune.worker.engine.preprocess import tabular_preprocessor
from droptune.worker.engine.stacked import TrainConfig, TrialRates, train_trials

CPU = torch.device("cpu")
K, SEED, N = 4, 0, 160
NUMERIC = ["a", "b", "d"]
CATEGORICAL = ["c"]
MISSING = ["a", "c", "d"]  # every column with a missing value anywhere; b has none


def _frame() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A table whose fold-0 validation rows look nothing like the rest: far larger numbers, a
    category ("violet") that appears nowhere else, and the only missing values of column d."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=N)
    va0 = make_folds(y, K, SEED, "regression")[0][1]
    a = rng.normal(0.0, 1.0, N)
    a[rng.random(N) < 0.15] = np.nan
    a[va0] += 100.0
    b = rng.normal(5.0, 2.0, N)
    b[va0] *= 10.0
    d = rng.normal(-3.0, 0.5, N)
    d[va0[::3]] = np.nan
    c = rng.choice(np.array(["red", "red", "red", "green", "blue"], dtype=object), N)
    c[rng.random(N) < 0.1] = np.nan
    c[va0[::2]] = "violet"
    df = pd.DataFrame({"a": a, "b": b, "c": pd.Series(c, dtype=object), "d": d})
    return df, y, va0


def _dataset(df: pd.DataFrame, y: np.ndarray, fitted: list[Any] | None = None) -> Dataset:
    def factory() -> ColumnTransformer:
        t = tabular_preprocessor(NUMERIC, CATEGORICAL, MISSING)
        if fitted is not None:
            fitted.append(t)  # to look at what each fold's transformer learnt
        return t

    return dataset_from_arrays(df, y, task="regression", preprocess=factory)


def _expected(df: pd.DataFrame, tr: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The tabular preprocessing done by hand with numpy, from the rows `tr` only."""
    blocks: list[np.ndarray] = []
    stats: dict[str, Any] = {}
    for col in NUMERIC:
        x = df[col].to_numpy(dtype=np.float64)
        median = float(np.nanmedian(x[tr]))
        filled = np.where(np.isnan(x), median, x)
        mean, std = filled[tr].mean(), filled[tr].std()
        stats[col] = (median, mean, std)
        blocks.append(((filled - mean) / std)[:, None])
    c = df["c"].to_numpy(dtype=object)
    seen = [v for v in c[tr] if isinstance(v, str)]
    mode = Counter(seen).most_common(1)[0][0]
    filled_c = np.array([v if isinstance(v, str) else mode for v in c], dtype=object)
    categories = sorted(set(filled_c[tr].tolist()))
    stats["c"] = (mode, categories)
    blocks.append((filled_c[:, None] == np.array(categories, dtype=object)[None]).astype(float))
    for col in MISSING:
        blocks.append(df[col].isna().to_numpy(dtype=np.float64)[:, None])
    return np.hstack(blocks), stats


def test_each_fold_is_preprocessed_with_its_training_rows_only() -> None:
    df, y, _ = _frame()
    fitted: list[Any] = []
    data = prepare_folds(_dataset(df, y, fitted), K, SEED, CPU)
    folds = make_folds(y, K, SEED, "regression")
    assert len(fitted) == K
    everything, all_stats = _expected(df, np.arange(N))
    for k, (tr, _) in enumerate(folds):
        want, stats = _expected(df, tr)
        width = want.shape[1]
        np.testing.assert_allclose(data.X_std[k, :, :width].numpy(), want, rtol=0, atol=1e-5)
        assert np.abs(data.X_std[k, :, width:].numpy()).max(initial=0.0) == 0.0  # padding
        # ... and the fitted transformer holds exactly those training-only statistics
        t = fitted[k].named_transformers_
        num, cat = t["numeric"], t["categorical"]
        medians, means, stds = np.array([stats[col] for col in NUMERIC]).T
        np.testing.assert_allclose(num["impute"].statistics_, medians, rtol=1e-12)
        np.testing.assert_allclose(num["scale"].mean_, means, rtol=1e-12)
        np.testing.assert_allclose(num["scale"].scale_, stds, rtol=1e-12)
        assert cat["impute"].statistics_.tolist() == [stats["c"][0]]
        assert cat["onehot"].categories_[0].tolist() == stats["c"][1]
        if k == 0:
            # fitting on every row would give other numbers: the check above has teeth
            assert not np.allclose(stats["a"], all_stats["a"])
            assert not np.allclose(stats["b"], all_stats["b"])
            assert stats["c"][1] != all_stats["c"][1]
            assert not np.allclose(want, everything[:, : want.shape[1]], atol=1e-3)


def test_unseen_category_padding_and_missing_indicators() -> None:
    df, y, va0 = _frame()
    data = prepare_folds(_dataset(df, y), K, SEED, CPU)
    # fold 0's training part never saw "violet": one category fewer, padded to the others
    width0 = _expected(df, make_folds(y, K, SEED, "regression")[0][0])[0].shape[1]
    assert data.n_features == width0 + 1
    x0 = data.X_std[0].numpy()
    np.testing.assert_array_equal(x0[:, width0:], 0.0)
    violet = df.index[df["c"] == "violet"].to_numpy()
    assert set(violet.tolist()) <= set(va0.tolist())
    onehot0 = x0[:, 3 : 3 + 3]  # after a, b, d: blue, green, red
    np.testing.assert_array_equal(onehot0[violet], 0.0)  # unknown category: all zeros
    others = np.setdiff1d(np.arange(N), violet)
    np.testing.assert_array_equal(onehot0[others].sum(1), 1.0)
    # missing indicators: the same columns, with the same values, on every fold
    flags = df[MISSING].isna().to_numpy(dtype=np.float32)
    assert flags[:, 2].any() and not flags[np.setdiff1d(np.arange(N), va0), 2].any()
    for k in range(K):
        width = width0 if k == 0 else data.n_features
        np.testing.assert_array_equal(data.X_std[k, :, width - 3 : width].numpy(), flags)
    assert torch.isfinite(data.X_std).all()


@pytest.mark.parametrize("dtype", ["str", "string"], ids=["pandas-str", "pandas-string-NA"])
def test_pandas_string_dtypes_encode_like_object_columns(dtype: str) -> None:
    df, y, _ = _frame()
    as_object = prepare_folds(_dataset(df, y), K, SEED, CPU)
    typed = df.assign(c=df["c"].astype(dtype))
    assert typed["c"].isna().sum() == df["c"].isna().sum()
    torch.testing.assert_close(
        prepare_folds(_dataset(typed, y), K, SEED, CPU).X_std, as_object.X_std
    )


def test_array_dataset_matches_the_hand_written_standardisation() -> None:
    for name in ("wine", "digits"):
        ds = load_dataset(name)
        data = prepare_folds(ds, 5, 0, CPU)
        X = ds.X.astype(np.float64)
        for k, (tr, _) in enumerate(make_folds(ds.y, 5, 0)):
            mean, std = X[tr].mean(axis=0), X[tr].std(axis=0)
            want = (X - mean) / np.where(std < 1e-6, 1.0, std)
            np.testing.assert_allclose(data.X_std[k].numpy(), want, rtol=0, atol=1e-5)


def test_missing_values_need_an_imputer_and_tabular_output_is_float() -> None:
    df, y, _ = _frame()
    with pytest.raises(ValueError, match="missing"):
        prepare_folds(dataset_from_arrays(df[["a", "b"]], y, task="regression"), K, SEED, CPU)
    # numeric frames without missing values work with the default StandardScaler
    plain = prepare_folds(dataset_from_arrays(df[["b"]], y, task="regression"), K, SEED, CPU)
    assert plain.X_std.shape == (K, N, 1)
    only_flags = tabular_preprocessor([], [], ["a", "c"]).fit_transform(df)
    assert only_flags.dtype == np.float64 and only_flags.shape == (N, 2)
    with pytest.raises(ValueError, match="at least one column"):
        tabular_preprocessor([], [], [])


def test_tabular_classification_trains_end_to_end() -> None:
    df, _, _ = _frame()
    # red rows against the rest: missing c is imputed red, so the net needs the c-missing flag
    labels = np.where(df["c"] == "red", "red", "other")
    factory = partial(tabular_preprocessor, NUMERIC, CATEGORICAL, MISSING)
    ds = dataset_from_arrays(df, labels, task="classification", preprocess=factory)
    assert ds.n_classes == 2 and ds.y.dtype == np.int64 and ds.X is df
    data = prepare_folds(ds, K, SEED, CPU)
    (r,) = train_trials(
        data, MLPConfig((16,)), TrainConfig(epochs=20, lr=1e-2), [TrialRates((0.1,))]
    )
    assert len(r.fold_scores) == K and r.mean > 0.8
