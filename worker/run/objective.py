"""The Optuna side of a batch: sampler and pruner from the spec, trial creation, suggestions."""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from droptune.core.spec.study import StudySpec
from droptune.worker.engine.stacked import TrialRates


class _Grid(optuna.samplers.GridSampler):
    """GridSampler that never calls `study.stop()`, which raises outside `Study.optimize`;
    droptune's queue, not the sampler, decides when a study has all its trials."""

    def after_trial(self, *args: Any, **kwargs: Any) -> None:
        return None


def search_seed(spec: StudySpec) -> int:
    """The seed of the search: `search.seed`, else `cv.seed`."""
    return spec.search.seed if spec.search.seed is not None else spec.cv.seed


def derive_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed that is a pure function of (seed, keys), one independent stream per key."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


class TrialSeededRandom(optuna.samplers.RandomSampler):
    """Uniform draws where trial n's value of a parameter depends only on (seed, n, name).

    A sampler is built anew for every batch, and several workers create trials in any order:
    keyed by trial number, the draws neither repeat from batch to batch nor depend on which
    worker created which trial.
    """

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self._seed = seed

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        key = derive_seed(self._seed, trial.number, zlib.crc32(param_name.encode()))
        draw = optuna.samplers.RandomSampler(seed=key)
        return draw.sample_independent(study, trial, param_name, param_distribution)


def n_startup_trials(spec: StudySpec) -> int:
    return min(10, max(2, spec.search.n_trials // 4))


def make_sampler(spec: StudySpec, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler for one batch, seeded from `search_seed(spec)`.

    random and grid depend on (seed, trial number) only. TPE and GP start with the same
    per-trial random draws; after that their own generator is seeded from (seed,
    trials_so_far), so a fresh sampler per batch does not replay the last batch's draws and the
    search stays a pure function of the spec and the study's history.
    """
    s = spec.search
    seed = search_seed(spec)
    startup = TrialSeededRandom(seed)
    if s.sampler == "random":
        return startup
    if s.sampler == "design":
        from droptune.worker.run.design import DesignSampler  # imports the answer's statistics

        return DesignSampler(spec, seed)
    if s.sampler == "grid":
        grid = np.linspace(s.dropout_low, s.dropout_high, s.n_trials).round(6).tolist()
        space: dict[str, Any] = {name: grid for name in spec.param_names()}
        if s.searches_input_dropout:
            space["input_dropout"] = (
                np.linspace(s.input_dropout_low, s.input_dropout_high, s.n_trials).round(6).tolist()
            )
        # Trial n < grid size takes point n of the grid shuffled by `seed`.
        return _Grid(space, seed=seed)
    batch_seed = derive_seed(seed, trials_so_far)
    if s.sampler == "gp":
        # qLogEI over the RUNNING trials' parameters keeps a batch's rates apart.
        return optuna.samplers.GPSampler(
            seed=batch_seed,
            independent_sampler=startup,
            n_startup_trials=n_startup_trials(spec),
            warn_independent_sampling=False,
        )
    # TPE with the constant liar (Optuna's default) keeps a batch's rates apart.
    tpe = optuna.samplers.TPESampler(n_startup_trials=n_startup_trials(spec), seed=batch_seed)
    tpe._random_sampler = startup  # its startup draws: the same per-trial ones as random's
    return tpe


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    epochs = spec.training.epochs
    if spec.search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=min(2, epochs - 1))
    if spec.search.pruner == "paired":
        from droptune.worker.run.pruning import PairedPruner

        return PairedPruner(spec)
    if spec.search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def open_study(storage: RDBStorage, name: str, spec: StudySpec) -> optuna.Study:
    """The study with a sampler built for this batch (see make_sampler)."""
    so_far = storage.get_n_trials(storage.get_study_id_from_name(name))
    return optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(spec, so_far),
        pruner=make_pruner(spec),
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


def median_at(trials: Iterable[FrozenTrial], step: int) -> float | None:
    """The median of the trials' reported scores at `step` (None when none reported one)."""
    values = [t.intermediate_values[step] for t in trials if step in t.intermediate_values]
    return float(np.median(values)) if values else None


def level_with(folds: np.ndarray, reference: float | None, maximize: bool) -> bool:
    """Whether the mean of these split scores is no worse than `reference` by more than their
    standard error (std / sqrt(J), ddof = 1): the batch spares such a trial from pruning."""
    if reference is None or len(folds) < 2 or not np.isfinite(folds).all():
        return False
    se = float(np.std(folds, ddof=1)) / float(np.sqrt(len(folds)))
    mean = float(np.mean(folds))
    gap = reference - mean if maximize else mean - reference
    return gap <= se
