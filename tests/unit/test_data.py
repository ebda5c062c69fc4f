"""Datasets, folds and per-fold standardisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from droptune.core import catalogue
from droptune.core.spec.study import StudySpec
from droptune.worker.engine.data import (
    BUILTINS,
    Dataset,
    dataset_from_arrays,
    load_dataset,
    make_folds,
    prepare_folds,
)

EXPECTED = {
    "digits": (1797, 64, 10, (1, 8, 8)),
    "breast_cancer": (569, 30, 2, None),
    "wine": (178, 13, 3, None),
    "iris": (150, 4, 3, None),
    "synthetic": (1000, 20, 2, None),
}


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_shapes(name: str) -> None:
    ds = load_dataset(name)
    n, f, c, shape = EXPECTED[name]
    assert ds.X.shape == (n, f) and ds.X.dtype == np.float32
    assert ds.y.shape == (n,) and ds.y.dtype == np.int64
    assert ds.n_classes == c
    assert sorted(np.unique(ds.y).tolist()) == list(range(c))
    assert ds.image_shape == shape


def test_synthetic_options() -> None:
    opts: dict[str, int | float] = {"n_samples": 300, "n_features": 7, "n_informative": 5}
    ds = load_dataset("synthetic", {**opts, "n_classes": 3, "seed": 4})
    assert ds.X.shape == (300, 7) and ds.n_classes == 3
    again = load_dataset("synthetic", {**opts, "n_classes": 3, "seed": 4})
    other = load_dataset("synthetic", {**opts, "n_classes": 3, "seed": 5})
    np.testing.assert_array_equal(ds.X, again.X)
    assert not np.array_equal(ds.X, other.X)


def test_unknown_name_and_options_raise() -> None:
    with pytest.raises(ValueError, match="mnist"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="bogus"):
        load_dataset("synthetic", {"bogus": 1})
    with pytest.raises(ValueError, match="options"):
        load_dataset("iris", {"n_samples": 3})


def test_dataset_from_arrays_label_encodes() -> None:
    ds = dataset_from_arrays(
        np.arange(12.0).reshape(6, 2), np.array(["b", "a", "c", "a", "b", "c"])
    )
    assert ds.y.tolist() == [1, 0, 2, 0, 1, 2] and ds.n_classes == 3
    with pytest.raises(ValueError):
        dataset_from_arrays(np.zeros((3, 2)), np.zeros(4))


def test_dataset_from_arrays_regression_keeps_targets() -> None:
    y = np.array([3.5, -1.0, 3.5, 2.0, 10.0, 0.25])
    ds = dataset_from_arrays(np.arange(12.0).reshape(6, 2), y, task="regression")
    assert ds.task == "regression" and ds.n_classes == 1 and ds.preprocess is None
    assert ds.y.dtype == np.float64 and ds.y.tolist() == y.tolist()  # no label encoding
    assert ds.X.dtype == np.float32
    with pytest.raises(ValueError, match="finite"):
        dataset_from_arrays(np.zeros((2, 2)), np.array([1.0, np.nan]), task="regression")
    with pytest.raises(ValueError, match="task"):
        dataset_from_arrays(np.zeros((2, 2)), np.zeros(2), task="ranking")
    with pytest.raises(ValueError, match="task"):
        Dataset(np.zeros((2, 2)), np.zeros(2), 1, task="ranking")
    with pytest.raises(ValueError, match="one output"):
        Dataset(np.zeros((2, 2)), np.zeros(2), 3, task="regression")
    with pytest.raises(ValueError, match="task"):
        make_folds(np.zeros(10), 2, 0, "ranking")


def test_regression_folds_are_shuffled_kfold() -> None:
    y = np.linspace(0.0, 1.0, 103)  # sorted targets: unshuffled folds would be contiguous
    folds = make_folds(y, 5, 3, "regression")
    assert [len(va) for _, va in folds] == [21, 21, 21, 20, 20]
    assert sorted(np.concatenate([va for _, va in folds]).tolist()) == list(range(103))
    assert all(np.ptp(va) > 50 for _, va in folds)
    data = prepare_folds(dataset_from_arrays(y[:, None], y, task="regression"), 5, 3)
    assert data.task == "regression" and data.y.shape == (5, 103)
    for k, (tr, _) in enumerate(folds):
        np.testing.assert_array_equal(data.train_idx[k, : data.train_len_host[k]].numpy(), tr)
        ys = data.y[k, tr].double()
        assert abs(float(ys.mean())) < 1e-6 and abs(float(ys.std(unbiased=False)) - 1) < 1e-6


def test_folds_deterministic_disjoint_covering_stratified() -> None:
    y = load_dataset("digits").y
    a, b, c = make_folds(y, 5, 0), make_folds(y, 5, 0), make_folds(y, 5, 1)
    for (tr_a, va_a), (tr_b, va_b) in zip(a, b, strict=True):
        np.testing.assert_array_equal(tr_a, tr_b)
        np.testing.assert_array_equal(va_a, va_b)
    assert any(not np.array_equal(va_a, va_c) for (_, va_a), (_, va_c) in zip(a, c, strict=True))
    all_val = np.concatenate([va for _, va in a])
    assert sorted(all_val.tolist()) == list(range(len(y)))  # every sample validated exactly once
    overall = np.bincount(y) / len(y)
    for tr, va in a:
        assert not set(tr.tolist()) & set(va.tolist())
        assert len(tr) + len(va) == len(y)
        np.testing.assert_allclose(np.bincount(y[va], minlength=10) / len(va), overall, atol=0.01)


def test_standardisation_uses_train_part_only() -> None:
    ds = load_dataset("wine")
    data = prepare_folds(ds, 4, 0, torch.device("cpu"))
    assert data.X_std.shape == (4, 178, 13) and data.X_std.dtype == torch.float32
    for k in range(4):
        tr = data.train_idx[k, : data.train_len_host[k]]
        xs = data.X_std[k, tr].double()
        np.testing.assert_allclose(xs.mean(0).numpy(), 0.0, atol=1e-5)
        np.testing.assert_allclose(xs.std(0, unbiased=False).numpy(), 1.0, atol=1e-4)
        va = data.val_idx[k, : data.val_len_host[k]]
        assert abs(float(data.X_std[k, va].mean())) > 1e-4  # validation is not re-centred

    # moving a validation sample of fold 0 far away changes nothing about fold 0's train rows
    va0 = int(data.val_idx[0, 0])
    X2 = ds.X.copy()
    X2[va0] += 1000.0
    data2 = prepare_folds(dataset_from_arrays(X2, ds.y), 4, 0, torch.device("cpu"))
    tr0 = data.train_idx[0, : data.train_len_host[0]]
    torch.testing.assert_close(data2.X_std[0, tr0], data.X_std[0, tr0])
    assert not torch.allclose(data2.X_std[0, va0], data.X_std[0, va0])
    # ... but it is a training sample of the other folds, whose statistics must move
    assert not torch.allclose(data2.X_std[1, tr0], data.X_std[1, tr0])


def test_constant_feature_is_not_divided_by_zero() -> None:
    data = prepare_folds(load_dataset("digits"), 3, 0, torch.device("cpu"))
    assert torch.isfinite(data.X_std).all()
    assert float(data.X_std[:, :, 0].abs().max()) == 0.0  # digits' pixel 0 is always 0


def test_fold_padding_and_lengths() -> None:
    data = prepare_folds(load_dataset("iris"), 4, 0, torch.device("cpu"))
    assert data.train_len.tolist() == list(data.train_len_host)
    assert data.val_len.tolist() == list(data.val_len_host)
    assert data.train_idx.shape == (4, max(data.train_len_host))
    for k in range(4):
        tr = set(data.train_idx[k, : data.train_len_host[k]].tolist())
        va = set(data.val_idx[k, : data.val_len_host[k]].tolist())
        assert not tr & va and len(tr | va) == 150


@pytest.mark.parametrize("name", sorted(catalogue.BUILTINS))
def test_the_catalogue_matches_the_data(name: str) -> None:
    """The spec checks folds and shapes against the catalogue: it must be the data's truth."""
    entry = catalogue.BUILTINS[name]
    ds = load_dataset(name)
    counts = np.bincount(ds.y)
    assert (ds.X.shape, ds.n_classes, ds.image_shape) == (
        (entry.rows, entry.features),
        entry.classes,
        entry.image_shape,
    )
    assert int(counts.min()) == entry.min_class


def test_the_synthetic_defaults_are_the_catalogue_s() -> None:
    o = catalogue.SYNTHETIC_DEFAULTS
    ds = load_dataset("synthetic")
    assert ds.X.shape == (o["n_samples"], o["n_features"]) and ds.n_classes == o["n_classes"]
    spec = StudySpec.model_validate({"dataset": {"builtin": "synthetic"}})
    assert spec.dataset.synthetic_options() == o
