"""Datasets and cross-validation folds, laid out for the stacked training engine.

Everything here is deterministic given a seed, so every trial of a study sees the same folds.
Features are preprocessed per fold by a scikit-learn transformer fitted on that fold's training
rows only: StandardScaler unless the Dataset brings its own (worker.preprocess for tables).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from sklearn import datasets as skdatasets
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from sklearn.preprocessing import StandardScaler

from droptune.core import catalogue

BUILTINS = catalogue.DATASETS
TASKS = catalogue.TASKS

Options = dict[str, int | float]

_SYNTHETIC_DEFAULTS: Options = dict(catalogue.SYNTHETIC_DEFAULTS)


@dataclass(frozen=True)
class Dataset:
    # float32 ndarray [N, F], or a DataFrame of feature columns: it is only ever handed to the
    # preprocess transformer, rows picked with .iloc (pandas is not imported here)
    X: Any
    y: np.ndarray  # classification: int64 [N], labels 0..n_classes-1; regression: float64 [N]
    n_classes: int  # network outputs: the number of classes, 1 for regression
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) when rows are flattened images
    task: str = "classification"  # or "regression"
    # makes a fresh, unfitted sklearn transformer (fit / transform) per fold; None: StandardScaler
    preprocess: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "regression" and self.n_classes != 1:
            raise ValueError(f"a regression dataset has one output, got n_classes={self.n_classes}")


def dataset_from_arrays(
    X: Any,
    y: np.ndarray,
    image_shape: tuple[int, int, int] | None = None,
    task: str = "classification",
    preprocess: Callable[[], Any] | None = None,
) -> Dataset:
    """Wrap arbitrary arrays. Classification: labels of any type are encoded to 0..C-1 in sorted
    order. Regression: finite float64 targets, one output. An array X is stored float32 [N, F];
    a DataFrame is kept as it is, for `preprocess` to turn into numbers fold by fold."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not hasattr(X, "iloc"):
        X = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    if len(X.shape) != 2:
        raise ValueError(f"X must be 2-D [N, F], got shape {X.shape}")
    if task == "regression":
        targets: np.ndarray = np.asarray(y, dtype=np.float64)
        if targets.ndim != 1 or not np.isfinite(targets).all():
            raise ValueError("regression targets must be a 1-D array of finite numbers")
        n_classes = 1
    else:
        classes, codes = np.unique(np.asarray(y), return_inverse=True)
        targets, n_classes = codes.astype(np.int64).reshape(-1), len(classes)
    if targets.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {targets.shape[0]}")
    if image_shape is not None and int(np.prod(image_shape)) != X.shape[1]:
        raise ValueError(f"image_shape {image_shape} does not match {X.shape[1]} features")
    return Dataset(X, targets, n_classes, image_shape, task, preprocess)


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
        return dataset_from_arrays(X, y, image_shape=catalogue.BUILTINS["digits"].image_shape)
    X, y = _SKLEARN_LOADERS[name](return_X_y=True)  # type: ignore[misc]
    return dataset_from_arrays(X, y)


def repeat_seed(seed: int, repeat: int) -> int:
    """The shuffle seed of repeat r: the seed itself for the first (so repeats=1 is plain K-fold
    with `seed`), distinct reproducible seeds after it."""
    return seed if repeat == 0 else (seed * 1_000_003 + repeat * 7_919) % 2**32


def make_folds(
    y: np.ndarray, k: int, seed: int, task: str = "classification", repeats: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """R x K (train_idx, val_idx) pairs, a pure function of (y, k, seed, task, repeats):
    stratified by class for classification, shuffled (seeded) for regression; repeat r reshuffles
    with repeat_seed(seed, r) (as RepeatedStratifiedKFold does, but with repeat 0 equal to plain
    K-fold, so a study's folds do not change when repeats are added)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    placeholder = np.zeros((len(y), 1), dtype=np.float32)
    out = []
    for r in range(repeats):
        rs = repeat_seed(seed, r)
        if task == "classification":
            splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=rs).split(
                placeholder, y
            )
        else:
            splits = KFold(n_splits=k, shuffle=True, random_state=rs).split(placeholder)
        out += [(tr.astype(np.int64), va.astype(np.int64)) for tr, va in splits]
    return out


def holdout_split(
    y: np.ndarray, fraction: float, seed: int, task: str = "classification"
) -> tuple[np.ndarray, np.ndarray]:
    """(search rows, held-out rows): scikit-learn's train_test_split of the row numbers with
    test_size=fraction and random_state=seed, stratified by class for classification. The README
    shows this line so a user can find the held-out rows again."""
    rows = np.arange(len(y))
    stratify = y if task == "classification" else None
    train, test = train_test_split(rows, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(train).astype(np.int64), np.sort(test).astype(np.int64)


def subset(ds: Dataset, rows: np.ndarray) -> Dataset:
    """The data set restricted to `rows` (labels keep their codes)."""
    return replace(ds, X=_rows(ds.X, rows), y=ds.y[rows])


@dataclass
class FoldData:
    """All K folds on one device, ready for gather-only access inside the training loop.

    X_std[k] is the whole dataset preprocessed by a transformer fitted on fold k's training
    rows, so a member training on fold k gathers rows from X_std[k] and never sees validation
    statistics. Folds whose width differs are zero-padded on the right (see prepare_folds).
    Index tables are padded with 0 to the longest fold; the *_len vectors say how much is real.

    Classification: y is the int64 labels [N]. Regression: y is float32 [K, N], row k the
    targets standardised with fold k's training mean y_shift[k] and std y_scale[k], which is
    what the network predicts; scores are reported on the original scale.
    """

    X_std: torch.Tensor  # float32 [K, N, F]
    y: torch.Tensor  # int64 [N] (classification) or float32 [K, N] (regression)
    train_idx: torch.Tensor  # int64 [K, Ltr]
    train_len: torch.Tensor  # int64 [K]
    val_idx: torch.Tensor  # int64 [K, Lva]
    val_len: torch.Tensor  # int64 [K]
    n_classes: int  # network outputs: 1 for regression
    image_shape: tuple[int, int, int] | None
    # host copies of the lengths so the engine can plan batches without device syncs
    train_len_host: tuple[int, ...]
    val_len_host: tuple[int, ...]
    task: str = "classification"
    y_shift: torch.Tensor | None = None  # float64 [K], regression only
    y_scale: torch.Tensor | None = None  # float64 [K], regression only

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


def _rows(X: Any, idx: np.ndarray) -> Any:
    return X.iloc[idx] if hasattr(X, "iloc") else X[idx]


def _fold_features(ds: Dataset, X: Any, train: np.ndarray) -> tuple[np.ndarray, Any]:
    """All rows of X through a fresh transformer fitted on the training rows only (float64),
    and that transformer."""
    transformer = ds.preprocess() if ds.preprocess is not None else StandardScaler()
    transformer.fit(_rows(X, train))
    z = transformer.transform(X)
    if hasattr(z, "toarray"):  # a sparse result (a user's transformer may give one)
        z = z.toarray()
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] != len(ds.y):
        raise ValueError(f"preprocessing gave shape {z.shape}, expected ({len(ds.y)}, F)")
    if not np.isfinite(z).all():
        raise ValueError(
            "preprocessing left missing or infinite values: missing values need an imputing "
            "transformer (worker.preprocess.tabular_preprocessor)"
        )
    return z, transformer


def _standardised_targets(
    y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets [K, N] float32, row k standardised with fold k's training mean and std (float64
    [K] each); constant training targets get std 1, as StandardScaler does for features."""
    y64 = np.asarray(y, dtype=np.float64).reshape(-1, 1)
    out = np.empty((len(folds), len(y64)), dtype=np.float32)
    shift, scale = np.empty(len(folds)), np.empty(len(folds))
    for i, (tr, _) in enumerate(folds):
        scaler = StandardScaler().fit(y64[tr])
        out[i] = scaler.transform(y64)[:, 0]
        shift[i], scale[i] = scaler.mean_[0], scaler.scale_[0]
    return out, shift, scale


def prepare_folds(
    ds: Dataset, k: int, seed: int, device: torch.device | str = "cpu", repeats: int = 1
) -> FoldData:
    """Split, preprocess per fold with a transformer fitted on the training part only (targets
    too, for regression), and move everything to device.

    One-hot encoders make a fold as wide as the categories its training part has seen, so
    widths can differ between folds; narrower folds are zero-padded on the right to the widest.
    Each member has its own weights and sees only its own fold's columns, so column j need not
    mean the same on two folds, and a padding column (always 0) never changes an output.
    """
    return fold_data(ds, make_folds(ds.y, k, seed, ds.task, repeats), device)[0]


def fold_data(
    ds: Dataset, folds: list[tuple[np.ndarray, np.ndarray]], device: torch.device | str = "cpu"
) -> tuple[FoldData, list[Any]]:
    """FoldData for explicit (train, val) splits, with the transformer fitted on each split's
    training rows (a refit's one split is every training row against the held-out ones)."""
    k = len(folds)
    transformers = []
    # fit in float64, store float32; a DataFrame goes to the transformer as it is
    X = ds.X if hasattr(ds.X, "iloc") else np.asarray(ds.X, dtype=np.float64)
    X_std = np.zeros((k, len(ds.y), 0), dtype=np.float32)
    for i, (tr, _) in enumerate(folds):
        z, fitted = _fold_features(ds, X, tr)
        transformers.append(fitted)
        if z.shape[1] > X_std.shape[2]:  # the first fold, or one wider than all before it
            X_std = np.pad(X_std, ((0, 0), (0, 0), (0, z.shape[1] - X_std.shape[2])))
        X_std[i, :, : z.shape[1]] = z
    if ds.image_shape is not None and int(np.prod(ds.image_shape)) != X_std.shape[2]:
        raise ValueError(
            f"image_shape {ds.image_shape} does not match {X_std.shape[2]} preprocessed features"
        )
    dev = torch.device(device)
    shift = scale = None
    if ds.task == "regression":
        y_np, s, c = _standardised_targets(ds.y, folds)
        y = torch.from_numpy(y_np).to(dev)
        shift, scale = torch.from_numpy(s).to(dev), torch.from_numpy(c).to(dev)
    else:
        y = torch.from_numpy(ds.y.astype(np.int64)).to(dev)
    tr_len = tuple(len(tr) for tr, _ in folds)
    va_len = tuple(len(va) for _, va in folds)
    data = FoldData(
        X_std=torch.from_numpy(X_std).to(dev),
        y=y,
        train_idx=torch.from_numpy(_pad([tr for tr, _ in folds])).to(dev),
        train_len=torch.tensor(tr_len, dtype=torch.int64, device=dev),
        val_idx=torch.from_numpy(_pad([va for _, va in folds])).to(dev),
        val_len=torch.tensor(va_len, dtype=torch.int64, device=dev),
        n_classes=ds.n_classes,
        image_shape=ds.image_shape,
        train_len_host=tr_len,
        val_len_host=va_len,
        task=ds.task,
        y_shift=shift,
        y_scale=scale,
    )
    return data, transformers
