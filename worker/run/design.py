"""`search.sampler: design`: droptune's own sampler for one noisy dimension (issue 21, part 1).

Every trial's rate comes from one scrambled Halton sequence keyed by the trial's number (van der
Corput's in one dimension; one dimension per dropout module with `per_layer`): any prefix of it
covers the range evenly, so the first batch, trained as one stacked model, is a space-filling
design as wide as the batch, and the rates never depend on which worker created which trial.

Later batches refine where the curve is undecided: once the study has finished trials, the range
shrinks to the tied set (core/answer/ties.py: the rates that may still be the best) widened on
each side by one spacing of the points so far, and the sequence goes on inside it, so the next
stack fills the band and its edges instead of the rates the data already ruled out. With one
rate per layer the band is a box: each layer's rates shrink to the span of the tied trials'
rates for that layer, widened the same way.

As an Optuna sampler (`BaseSampler`), so the study's record, `/trials` and the dashboard stay as
they are; the sampler is rebuilt per batch (worker/run/objective.py), reading the finished trials
once.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from droptune.core.answer.rules import answer
from droptune.core.spec.study import StudySpec

MIN_FINISHED = 4  # finished trials before the range shrinks to the tied band
# How wide a design batch is, as shares of n_trials (at least FIRST_MIN and REFINE_MIN trials):
# the first, space-filling batch, then each refining one. Replayed on 40 recorded 19-rate grids
# (bench/bench_pruning.py, "search: droptune"), a first design of 6 and refinements of 3 spent 39%
# of the grid's member-epochs (median), the recommended rate within one SE of the grid's answer
# on held-out rows in 36 of 40 runs; 16 + 4 (the width memory allowed on this CPU) spent 55% for
# 35 of 40: on a CPU every member costs its share of the matmuls. `search.batch_trials` sets a
# width of its own (wider on a GPU).
FIRST_SHARE, FIRST_MIN = 0.3, 6
REFINE_SHARE, REFINE_MIN = 0.15, 3


def design_width(n_trials: int, open_slots: int) -> int:
    """How many trials the next design batch wants: the first design while no slot of the
    study has been claimed, else a refining batch."""
    first = open_slots >= n_trials
    share, least = (FIRST_SHARE, FIRST_MIN) if first else (REFINE_SHARE, REFINE_MIN)
    return max(least, math.ceil(share * n_trials))


def halton_point(n: int, dims: int, seed: int) -> list[float]:
    """Point n (0-based) of the scrambled Halton sequence in [0, 1)^dims for `seed`."""
    from scipy.stats import qmc

    sampler = qmc.Halton(d=dims, scramble=True, seed=seed)
    if n:
        sampler.fast_forward(n)
    return [float(v) for v in sampler.random(1)[0]]


def refined_range(
    trials: Sequence[FrozenTrial], spec: StudySpec, low: float, high: float
) -> tuple[float, float]:
    """[low, high], or the tied band widened by one spacing of the finished rates (of one rate
    per trial; a per-layer study's box is `refined_box`'s)."""
    box = refined_box(trials, spec, low, high)
    return box.get("dropout", (low, high))


def refined_box(
    trials: Sequence[FrozenTrial], spec: StudySpec, low: float, high: float
) -> dict[str, tuple[float, float]]:
    """Each searched rate's range for the next batch: [low, high] until MIN_FINISHED trials
    finished, then, per rate (per layer with `per_layer`), the span of the tied trials' rates
    widened by one spacing of the finished trials on each side."""
    names = [n for n in spec.param_names() if n != "input_dropout"]
    whole = dict.fromkeys(names, (low, high))
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(done) < MIN_FINISHED:
        return whole
    tied = answer(trials, spec).tied
    if tied is None:
        return whole
    members = [t for t in done if t.number in set(tied.trials)]
    margin = (high - low) / len(done) ** (1 / len(names))  # the points' spacing in k dimensions
    box = {}
    for name in names:
        rates = [float(t.params[name]) for t in members if name in t.params]
        if not rates:
            return whole
        lo, hi = max(low, min(rates) - margin), min(high, max(rates) + margin)
        box[name] = (lo, hi) if hi > lo else (low, high)
    return box


class DesignSampler(optuna.samplers.BaseSampler):
    """Scrambled Halton rates keyed by trial number, inside the box `refined_box` gives at the
    batch's start."""

    def __init__(self, spec: StudySpec, seed: int) -> None:
        self.spec = spec
        self.seed = seed
        self._box: dict[str, tuple[float, float]] | None = None

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        assert isinstance(param_distribution, FloatDistribution), param_distribution
        low, high = param_distribution.low, param_distribution.high
        names = [n for n in self.spec.param_names() if n != "input_dropout"]
        if param_name in names:
            if self._box is None:
                finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                self._box = refined_box(finished, self.spec, low, high)
            low, high = self._box[param_name]
            u = halton_point(trial.number, len(names), self.seed)[names.index(param_name)]
        else:  # input dropout: its own one-dimensional sequence
            u = halton_point(trial.number, 1, self.seed ^ zlib.crc32(param_name.encode()))[0]
        return low + u * (high - low)
