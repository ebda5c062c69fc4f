"""Data files the tests upload: written under a test's tmp_path, never downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn import datasets as skdatasets


def cancer_csv(path: Path) -> Path:
    """scikit-learn's breast cancer data as a user would export it (label column `target`)."""
    skdatasets.load_breast_cancer(as_frame=True).frame.to_csv(path, index=False)
    return path


def mixed_csv(path: Path, n: int = 240, seed: int = 0) -> Path:
    """Numbers with gaps, a string column with gaps, a string label: real data's mess."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], size=n)
    label = np.where(x1 + (colour == "red") > 0.3, "yes", "no")
    lines = ["x1,x2,colour,label"]
    for i in range(n):
        a = "" if i % 17 == 3 else f"{x1[i]:.5f}"
        c = "" if i % 23 == 5 else colour[i]
        lines.append(f"{a},{x2[i]:.5f},{c},{label[i]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def regression_csv(path: Path, n: int = 300, seed: int = 0) -> Path:
    X, y = skdatasets.make_regression(
        n_samples=n, n_features=6, n_informative=4, noise=5.0, random_state=seed
    )
    cols = [f"f{i}" for i in range(X.shape[1])]
    rows = [",".join([*cols, "price"])]
    rows += [",".join(f"{v:.6f}" for v in (*x, t)) for x, t in zip(X, y, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    return path


def tabular_npz(path: Path, n: int = 300, seed: int = 0) -> Path:
    X, y = skdatasets.make_classification(
        n_samples=n, n_features=12, n_informative=6, n_classes=3, random_state=seed
    )
    np.savez(path, X=X.astype(np.float32), y=y)
    return path


def image_npz(path: Path, n: int = 400) -> Path:
    """digits as (N, H, W) images, labels as strings."""
    X, y = skdatasets.load_digits(return_X_y=True)
    np.savez_compressed(path, X=X[:n].reshape(-1, 8, 8), y=np.array([f"d{v}" for v in y[:n]]))
    return path
