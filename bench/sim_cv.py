"""Simulated cross-validation scores with a known truth (no training): the rates a study tried,
a true score curve over them, and per-split scores with K-fold's correlation structure.

Each trial's J = K x repeats split scores are its true score plus noise whose splits are
correlated by rho = 1 / K (a row trains in K - 1 of K folds: Nadeau & Bengio's model, the one
the corrected t-test assumes), plus a split effect every trial shares (one split is harder for
all rates; it cancels in paired differences, as on real folds). numpy only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Curve = Callable[[np.ndarray], np.ndarray]

TOP = 0.95


def flat(r: np.ndarray) -> np.ndarray:
    return np.full_like(r, TOP)


def peaked(r: np.ndarray) -> np.ndarray:
    return TOP - 0.4 * (r - 0.4) ** 2


def plateau(r: np.ndarray) -> np.ndarray:
    return TOP - 0.5 * np.maximum(0.0, np.abs(r - 0.35) - 0.15) ** 2


def edge(r: np.ndarray) -> np.ndarray:
    return TOP - 0.05 * r


CURVES: dict[str, Curve] = {"flat": flat, "peaked": peaked, "plateau": plateau, "edge": edge}


@dataclass(frozen=True)
class World:
    """One study's truth: the rates tried and their true scores; the noise of a split score."""

    rates: np.ndarray
    truth: np.ndarray
    k_folds: int = 5
    sigma: float = 0.01  # sd of one split's score around the trial's true score
    split_sd: float = 0.01  # sd of the effect a split has on every trial alike

    @property
    def rho(self) -> float:
        return 1.0 / self.k_folds

    @property
    def ratio(self) -> float:
        """n_test / n_train of a K-fold split."""
        return 1.0 / (self.k_folds - 1)

    @property
    def true_se(self) -> float:
        """The true standard error of a trial's mean over its K correlated splits."""
        k = self.k_folds
        return float(self.sigma * np.sqrt((1 + (k - 1) * self.rho) / k))

    def best(self, tol: float = 1e-12) -> set[int]:
        """The indices of the truly best rates (several on a flat stretch)."""
        top = self.truth.max()
        return {int(i) for i in np.flatnonzero(self.truth >= top - tol)}

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """Trials x K split scores, larger is better."""
        n, k = len(self.rates), self.k_folds
        cov = self.sigma**2 * ((1 - self.rho) * np.eye(k) + self.rho * np.ones((k, k)))
        noise = rng.multivariate_normal(np.zeros(k), cov, size=n)
        split = rng.normal(0.0, self.split_sd, size=k)
        return self.truth[:, None] + noise + split[None, :]


def world(curve: str, n_rates: int = 16, low: float = 0.0, high: float = 0.8) -> World:
    """The curve evaluated at `n_rates` evenly spaced rates (a space-filling first batch)."""
    rates = np.linspace(low, high, n_rates)
    return World(rates, CURVES[curve](rates))
