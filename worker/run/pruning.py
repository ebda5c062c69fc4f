"""`search.pruner: paired`: core/pruning.py's paired, epoch-matched rule as an Optuna pruner.

Optuna's `prune(study, trial)` sees a trial's reported means only; the rule needs every active
member's split scores at the epoch. The batch hands them over first (`observe`, from
worker/run/batch.py's per-epoch callback), the pruner decides for the whole stack at once, and
each member's `should_prune()` then reads the decision. The pruner is built anew for every batch
(objective.open_study), so its history is the batch's own: members of one stack share splits,
initial weights and batches, which is what makes them paired.
"""

from __future__ import annotations

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from droptune.core.pruning import paired_stop
from droptune.core.spec.study import StudySpec


class PairedPruner(optuna.pruners.BasePruner):
    def __init__(self, spec: StudySpec) -> None:
        self.epochs = spec.training.epochs
        self.maximize = spec.cv.direction == "maximize"
        self.folds = spec.cv.folds
        self.history: dict[int, list[float]] = {}
        self.stopping: set[int] = set()

    def observe(
        self, epoch: int, numbers: list[int], scores: np.ndarray, ratio: float | None
    ) -> None:
        """The stack's split scores at `epoch`, one row per active trial (by number)."""
        for n, row in zip(numbers, scores, strict=True):
            self.history.setdefault(n, []).append(float(np.mean(row)))
        rows = paired_stop(
            scores,
            self.history,
            numbers,
            epoch,
            self.epochs,
            ratio if ratio else 1 / (self.folds - 1),
            self.maximize,
        )
        self.stopping = {numbers[r] for r in rows}

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return trial.number in self.stopping
