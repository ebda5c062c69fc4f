"""The answer: the best rate with its cross-validated spread, and the one-standard-error choice."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from droptune.storage.schemas import Score


def primary_rate(params: dict[str, Any]) -> float | None:
    """The trial's dropout rate: `dropout`, or the mean of per-layer rates."""
    if "dropout" in params:
        return float(params["dropout"])
    layers = [float(v) for k, v in params.items() if k.startswith("dropout_")]
    return sum(layers) / len(layers) if layers else None


def score_of(trial: FrozenTrial) -> Score | None:
    folds = trial.user_attrs.get("fold_scores")
    if not folds:
        return None
    mean = float(trial.user_attrs.get("score_mean", sum(folds) / len(folds)))
    return Score(mean=mean, std=float(trial.user_attrs.get("score_std", 0.0)), folds=folds)


def best_and_one_se(
    trials: Sequence[FrozenTrial], maximize: bool
) -> tuple[FrozenTrial | None, FrozenTrial | None]:
    """The best COMPLETE trial, and the strongest regularisation within one SE of it.

    The standard error is the best trial's fold standard deviation over sqrt(K). Pruned trials
    trained for fewer epochs, so their scores are not comparable and are left out.
    """
    scored = [
        (t, s) for t in trials if t.state == TrialState.COMPLETE and (s := score_of(t)) is not None
    ]
    if not scored:
        return None, None
    sign = 1.0 if maximize else -1.0
    best, best_score = max(scored, key=lambda ts: (sign * ts[1].mean, -ts[0].number))
    se = best_score.std / math.sqrt(len(best_score.folds))
    threshold = sign * best_score.mean - se - 1e-12
    within = [t for t, s in scored if sign * s.mean >= threshold]
    one_se = max(within, key=lambda t: (primary_rate(t.params) or 0.0, -t.number))
    return best, one_se
