"""Datasets and cross-validation folds, laid out for the stacked training engine.

Everything here is deterministic given a seed, so every trial of a study sees the same folds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn import datasets as skdatasets
from sklearn.model_selection import StratifiedKFold

BUILTINS = ("digits", "breast_cancer", "wine", "iris", "synthetic")

Options = dict[str, int | float]

_SYNTHETIC_DEFAULTS: Options = {
    "n_samples": 1000,
    "n_features": 20,
    "n_informative": 10,
    "n_classes": 2,
    "seed": 0,
}


@dataclass(frozen=True)
class Dataset:
    X: np.ndarray  # float32 [N, F]
    y: np.ndarray  # int64 [N], labels 0..n_classes-1
    n_classes: int
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) when rows are flattened images


def dataset_from_arrays(
    X: np.ndarray, y: np.ndarray, image_shape: tuple[int, int, int] | None = None
) -> Dataset:
    """Wrap arbitrary arrays; labels of any type are encoded to 0..C-1 in sorted order."""
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D [N, F], got shape {X.shape}")
    classes, codes = np.unique(np.asarray(y), return_inverse=True)
    if codes.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {codes.shape[0]}")
    if image_shape is not None and int(np.prod(image_shape)) != X.shape[1]:
        raise ValueError(f"image_shape {image_shape} does not match {X.shape[1]} features")
    return Dataset(X, codes.astype(np.int64), len(classes), image_shape)


def _synthetic(options: Options) -> Dataset:
    unknown = set(options) - set(_SYNTHETIC_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown synthetic option(s): {sorted(unknown)}")
    o = {**_SYNTHETIC_DEFAULTS, **options}
    X, y = skdatasets.make_classification(
        n_samples=int(o["n_samples"]),
        n_features=int(o["n_features"]),
        n_informative=int(o["n_informative"]),
        n_redundant=0,
        n_classes=int(o["n_classes"]),
        random_state=int(o["seed"]),
    )
    return dataset_from_arrays(X, y)


_SKLEARN_LOADERS: dict[str, Callable[..., object]] = {
    "breast_cancer": skdatasets.load_breast_cancer,
    "wine": skdatasets.load_wine,
    "iris": skdatasets.load_iris,
}


def load_dataset(name: str, options: Options | None = None) -> Dataset:
    """Load a builtin dataset from scikit-learn's bundled files (never downloads)."""
    options = options or {}
    if name == "synthetic":
        return _synthetic(options)
    if name not in BUILTINS:
        raise ValueError(f"unknown dataset {name!r}; builtins are {', '.join(BUILTINS)}")
    if options:
        raise ValueError(f"dataset {name!r} takes no options, got {sorted(options)}")
    if name == "digits":
        X, y = skdatasets.load_digits(return_X_y=True)
        return dataset_from_arrays(X, y, image_shape=(1, 8, 8))
    X, y = _SKLEARN_LOADERS[name](return_X_y=True)  # type: ignore[misc]
    return dataset_from_arrays(X, y)


def make_folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified K-fold (train_idx, val_idx) pairs; a pure function of (y, k, seed)."""
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    placeholder = np.zeros((len(y), 1), dtype=np.float32)
    return [(tr.astype(np.int64), va.astype(np.int64)) for tr, va in skf.split(placeholder, y)]


@dataclass
class FoldData:
    """All K folds on one device, ready for gather-only access inside the training loop.

    X_std[k] is the whole dataset standardised with fold k's training statistics, so a member
    training on fold k gathers rows from X_std[k] and never sees validation statistics.
    Index tables are padded with 0 to the longest fold; the *_len vectors say how much is real.
    """

    X_std: torch.Tensor  # float32 [K, N, F]
    y: torch.Tensor  # int64 [N]
    train_idx: torch.Tensor  # int64 [K, Ltr]
    train_len: torch.Tensor  # int64 [K]
    val_idx: torch.Tensor  # int64 [K, Lva]
    val_len: torch.Tensor  # int64 [K]
    n_classes: int
    image_shape: tuple[int, int, int] | None
    # host copies of the lengths so the engine can plan batches without device syncs
    train_len_host: tuple[int, ...]
    val_len_host: tuple[int, ...]

    @property
    def k(self) -> int:
        return int(self.X_std.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X_std.shape[2])

    @property
    def device(self) -> torch.device:
        return self.X_std.device


def _pad(rows: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(rows), max(len(r) for r in rows)), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def prepare_folds(ds: Dataset, k: int, seed: int, device: torch.device | str = "cpu") -> FoldData:
    """Split, standardise per fold with train-only statistics, and move everything to device."""
    folds = make_folds(ds.y, k, seed)
    X = ds.X.astype(np.float64)  # accumulate statistics in float64, store float32
    X_std = np.empty((k, *X.shape), dtype=np.float32)
    for i, (tr, _) in enumerate(folds):
        mean = X[tr].mean(axis=0)
        std = X[tr].std(axis=0)
        # constant features (e.g. the always-zero border pixels of digits) would divide by 0
        std = np.where(std < 1e-6, 1.0, std)
        X_std[i] = (X - mean) / std
    dev = torch.device(device)
    tr_len = tuple(len(tr) for tr, _ in folds)
    va_len = tuple(len(va) for _, va in folds)
    return FoldData(
        X_std=torch.from_numpy(X_std).to(dev),
        y=torch.from_numpy(ds.y.astype(np.int64)).to(dev),
        train_idx=torch.from_numpy(_pad([tr for tr, _ in folds])).to(dev),
        train_len=torch.tensor(tr_len, dtype=torch.int64, device=dev),
        val_idx=torch.from_numpy(_pad([va for _, va in folds])).to(dev),
        val_len=torch.tensor(va_len, dtype=torch.int64, device=dev),
        n_classes=ds.n_classes,
        image_shape=ds.image_shape,
        train_len_host=tr_len,
        val_len_host=va_len,
    )
