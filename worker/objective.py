"""The Optuna side of a batch: sampler and pruner from the spec, trial creation, suggestions."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from droptune.storage.spec import StudySpec
from droptune.worker.engine import TrialRates


class _Grid(optuna.samplers.GridSampler):
    """GridSampler that never calls `study.stop()`, which raises outside `Study.optimize`;
    droptune's queue, not the sampler, decides when a study has all its trials."""

    def after_trial(self, *args: Any, **kwargs: Any) -> None:
        return None


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    s = spec.search
    if s.sampler == "random":
        return optuna.samplers.RandomSampler()
    if s.sampler == "grid":
        grid = np.linspace(s.dropout_low, s.dropout_high, s.n_trials).round(6).tolist()
        space: dict[str, Any] = {name: grid for name in spec.param_names()}
        if s.searches_input_dropout:
            space["input_dropout"] = (
                np.linspace(s.input_dropout_low, s.input_dropout_high, s.n_trials).round(6).tolist()
            )
        return _Grid(space)
    # TPE with the constant liar (Optuna's default) keeps a batch's rates apart.
    return optuna.samplers.TPESampler(n_startup_trials=min(10, max(2, s.n_trials // 4)))


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    epochs = spec.training.epochs
    if spec.search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=min(2, epochs - 1))
    if spec.search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def open_study(storage: RDBStorage, name: str, spec: StudySpec) -> optuna.Study:
    return optuna.load_study(
        study_name=name, storage=storage, sampler=make_sampler(spec), pruner=make_pruner(spec)
    )


def new_trial(
    study: optuna.Study,
    params: dict[str, float] | None,
    user_attrs: dict[str, Any],
) -> optuna.Trial:
    """Create a RUNNING trial; `params`, when given, are retried as they were.

    Created in one insert with its attributes, so a trial never exists without its lease tag.
    """
    template = FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=dt.datetime.now(),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs=user_attrs,
        system_attrs={"fixed_params": params} if params else {},
        intermediate_values={},
        trial_id=-1,
    )
    # Through the study's own (caching) storage, which must know every trial it later writes.
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return optuna.Trial(study, trial_id)


def suggest(trial: optuna.Trial, spec: StudySpec) -> TrialRates:
    s = spec.search
    names = spec.param_names()
    rates = tuple(
        trial.suggest_float(n, s.dropout_low, s.dropout_high) for n in names if n != "input_dropout"
    )
    inp = 0.0
    if s.searches_input_dropout:
        inp = trial.suggest_float("input_dropout", s.input_dropout_low, s.input_dropout_high)
    return TrialRates(hidden=rates, input=inp)
