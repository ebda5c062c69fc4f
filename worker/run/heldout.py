"""Scores on held-out rows with a 95% interval: Wilson's for accuracy, a bootstrap for the rest.

numpy only. Predictions are on the data's own scale: class logits [n, C], or regression
predictions [n]; the metrics match worker.scoring's (log_loss is the mean cross-entropy, r2 is
scikit-learn's r2_score).
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP = 2000  # resamples; rows x resamples are drawn in blocks to bound memory


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion of hits in n trials."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _per_row(metric: str, out: np.ndarray, y: np.ndarray) -> np.ndarray:
    """What each row adds to the metric's sum: a hit, its cross-entropy, its (squared) error."""
    rows: np.ndarray
    if metric == "accuracy":
        rows = (out.argmax(-1) == y).astype(np.float64)
        return rows
    if metric == "log_loss":
        z = out - out.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        rows = -logp[np.arange(len(y)), y]
        return rows
    err = out.astype(np.float64) - y
    rows = np.abs(err) if metric == "mae" else err * err
    return rows


def _from_sums(
    metric: str, s: np.ndarray, n: int, y_sum: np.ndarray, y_sq: np.ndarray
) -> np.ndarray:
    if metric in ("accuracy", "log_loss", "mae"):
        return s / n
    if metric == "rmse":
        return np.sqrt(s / n)
    sst = y_sq - y_sum * y_sum / n  # r2: SST around the rows' own mean
    return np.where(sst > 0, 1.0 - s / np.where(sst > 0, sst, 1.0), np.where(s == 0, 1.0, 0.0))


def score(metric: str, out: np.ndarray, y: np.ndarray) -> float:
    rows = _per_row(metric, out, y)
    yf = y.astype(np.float64)
    n = len(y)
    one = _from_sums(
        metric, np.array([rows.sum()]), n, np.array([yf.sum()]), np.array([(yf * yf).sum()])
    )
    return float(one[0])


def ci95(metric: str, out: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The 95% interval of the metric on these rows: Wilson's for accuracy, else a percentile
    bootstrap over rows (seeded, so the same predictions give the same interval)."""
    n = len(y)
    rows = _per_row(metric, out, y)
    if metric == "accuracy":
        return wilson(int(rows.sum()), n)
    rng = np.random.default_rng(seed)
    yf = y.astype(np.float64)
    block = max(1, 20_000_000 // max(n, 1))
    stats = []
    for start in range(0, BOOTSTRAP, block):
        idx = rng.integers(0, n, size=(min(block, BOOTSTRAP - start), n))
        stats.append(_from_sums(metric, rows[idx].sum(1), n, yf[idx].sum(1), (yf[idx] ** 2).sum(1)))
    lo, hi = np.percentile(np.concatenate(stats), [2.5, 97.5])
    return float(lo), float(hi)
