"""The two searches replayed on a recorded grid (bench/bench_pruning.py's curves): which rates each
would train, which members it would stop, and what it would answer, with no training.

Members of a stack never influence each other, so a search that trains any subset of the grid's
rates gets those members' recorded curves: each proposed rate is moved to the nearest grid rate
(0.05 apart with 19 rates); a grid rate proposed again is trained again, costing its trial and
its epochs (the worker trains a near-duplicate rate as a trial of its own).

- **droptune**: the droptune strategy as the worker runs it: the design sampler's scrambled Halton
  rates (worker/run/design.py's `halton_point`, `refined_range`, `design_width`), each batch a
  stack pruned by core/pruning.py's paired rule, the answer after each batch (core/answer/rules.py)
  and the stopping rule (core/answer/settled.py with worker/run/settling.py's MIN_BEFORE), at
  most `cap` trials.
- **optuna**: the optuna strategy: TPE with the worker's start-up count and the median pruner
  (worker/run/objective.py's make_sampler / make_pruner) asking for one trial at a time (the
  worker asks for a quarter of the study per batch; sequential asking is kinder to TPE), every
  trial reported epoch by epoch from its recorded curve, a trial the pruner would stop kept when
  it is level with the median finished trial (the worker's guard), `cap` trials.

Both answer with the default rule (one-SE, paired) over their COMPLETE trials. Needs Optuna and
droptune's answer code: not part of the engine-only benchmark run on a GPU machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from droptune.core.answer.rules import answer
from droptune.core.answer.settled import curve_fit, settled
from droptune.core.pruning import paired_stop
from droptune.core.spec.study import StudySpec
from droptune.worker.run.design import design_width, halton_point, refined_range
from droptune.worker.run.objective import level_with, make_pruner, make_sampler, median_at
from droptune.worker.run.settling import MIN_BEFORE

K = 5


@dataclass(frozen=True)
class Outcome:
    best: int  # grid index of the best COMPLETE trial
    recommended: int  # grid index of the recommended rate
    spent: int  # member-epochs trained
    trials: int
    settled: bool  # the stopping rule ended it before the cap


def _spec(strategy: str, cap: int, high: float) -> StudySpec:
    return StudySpec.model_validate(
        {
            "dataset": {"builtin": "digits"},
            "search": {"strategy": strategy, "n_trials": cap, "dropout_high": high},
        }
    )


def _frozen(rate: float, folds: Sequence[float], state: TrialState, high: float) -> FrozenTrial:
    done = state == TrialState.COMPLETE
    attrs = {"fold_scores": list(folds), "score_mean": float(np.mean(folds))}
    attrs["score_std"] = float(np.std(folds, ddof=1))
    return create_trial(
        state=state,
        value=float(np.mean(folds)) if done else None,
        params={"dropout": rate},
        distributions={"dropout": FloatDistribution(0.0, high)},
        user_attrs=attrs if done else {},
    )


def _stack(curves: np.ndarray, members: list[int]) -> tuple[set[int], int]:
    """(the positions in `members` the paired rule lets finish, member-epochs spent) of one
    stack; `members` are grid rates, a rate proposed twice trained twice (the worker trains a
    near-duplicate rate as a trial of its own)."""
    epochs = curves.shape[0]
    active, spent = list(range(len(members))), 0
    history: dict[int, list[float]] = {i: [] for i in active}
    for e in range(1, epochs + 1):
        spent += len(active)
        scores = curves[e - 1, [members[i] for i in active]]
        for i, row in zip(active, scores, strict=True):
            history[i].append(float(row.mean()))
        if e < epochs:
            rows = paired_stop(scores, history, active, e, epochs, 1 / (K - 1), True)
            active = [m for r, m in enumerate(active) if r not in rows]
    return set(active), spent


def _outcome(
    trials: list[FrozenTrial], rates: np.ndarray, spec: StudySpec, spent: int, early: bool
) -> Outcome:
    a = answer([t for t in trials if t.state == TrialState.COMPLETE], spec)
    assert a.best is not None and a.recommended is not None
    best = int(np.argmin(np.abs(rates - a.best.params["dropout"])))
    recommended = int(np.argmin(np.abs(rates - a.recommended.dropout)))
    return Outcome(best, recommended, spent, len(trials), early)


def droptune_search(curves: np.ndarray, rates: np.ndarray, cap: int = 20, seed: int = 0) -> Outcome:
    high = float(rates[-1])
    spec = _spec("droptune", cap, high)
    trials: list[FrozenTrial] = []
    spent, before = 0, None
    while len(trials) < cap:
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        low_r, high_r = refined_range(complete, spec, 0.0, high) if trials else (0.0, high)
        width = min(design_width(cap, cap - len(trials)), cap - len(trials))
        # Trial n takes point n of the sequence inside the batch's range, as DesignSampler does.
        us = [halton_point(len(trials) + i, 1, seed)[0] for i in range(width)]
        batch = [int(np.argmin(np.abs(rates - (low_r + u * (high_r - low_r))))) for u in us]
        done, cost = _stack(curves, batch)
        spent += cost
        for i, m in enumerate(batch):
            state = TrialState.COMPLETE if i in done else TrialState.PRUNED
            trials.append(_frozen(float(rates[m]), curves[-1, m].tolist(), state, high))
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        after = answer(complete, spec)
        if before is not None and len(before[1]) >= MIN_BEFORE:
            fit = curve_fit(complete, spec)
            if settled(before[0], after, fit, len(trials), cap, high):
                return _outcome(trials, rates, spec, spent, True)
        before = (after, complete)
    return _outcome(trials, rates, spec, spent, False)


def optuna_search(curves: np.ndarray, rates: np.ndarray, cap: int = 20) -> Outcome:
    high = float(rates[-1])
    spec = _spec("optuna", cap, high)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(
        direction="maximize", sampler=make_sampler(spec), pruner=make_pruner(spec)
    )
    epochs, spent = curves.shape[0], 0
    for _ in range(cap):
        trial = study.ask()
        m = int(np.argmin(np.abs(rates - trial.suggest_float("dropout", 0.0, high))))
        pruned = False
        for e in range(1, epochs + 1):
            spent += 1
            trial.report(float(curves[e - 1, m].mean()), e)
            if e < epochs and trial.should_prune() and not _level(study, curves[e - 1, m], e):
                pruned = True
                break
        folds = curves[-1, m].tolist()
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
            continue
        trial.set_user_attr("fold_scores", folds)
        trial.set_user_attr("score_mean", float(np.mean(folds)))
        trial.set_user_attr("score_std", float(np.std(folds, ddof=1)))
        study.tell(trial, float(np.mean(folds)))
    trials = study.get_trials(deepcopy=False)
    return _outcome(list(trials), rates, spec, spent, False)


def _level(study: optuna.Study, folds: np.ndarray, epoch: int) -> bool:
    """The worker's guard for pruners other than paired (batch._level_with_finished): a trial
    within one SE of its split scores of the median COMPLETE trial at this epoch is kept."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return level_with(folds, median_at(done, epoch), True)
