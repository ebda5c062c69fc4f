"""Samplers through droptune's own ask/tell flow (a fresh sampler per batch, trials created by
`new_trial`, several RUNNING at once) on real SQLite files: seeded, reproducible, no replays."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from droptune.core.spec.study import StudySpec
from droptune.storage.jobs import queue, registry
from droptune.storage.optuna_bridge import ensure_study, optuna_storage
from droptune.storage.sql.db import create_engine
from droptune.storage.sql.migrate import upgrade
from droptune.storage.submit import submits
from droptune.worker.run.design import refined_box, refined_range
from droptune.worker.run.loop import Worker
from droptune.worker.run.objective import n_startup_trials, new_trial, open_study, suggest
from droptune.worker.run.settings import WorkerSettings
from tests import procs
from tests.queueing import study_row

Rates = dict[int, float]  # trial number -> dropout


def make_spec(sampler: str, n: int = 12, **search: Any) -> StudySpec:
    return StudySpec.model_validate(
        {
            "dataset": {"builtin": "iris"},
            "model": {"hidden": [16]},
            "training": {"epochs": 2},
            "cv": {"folds": 3},
            # every trial runs: these tests count and compare them (no early stop)
            "search": {
                "n_trials": n,
                "sampler": sampler,
                "pruner": "none",
                "stop_when_settled": False,
                **search,
            },
        }
    )


def bumpy(rate: float) -> float:
    """A made-up score with its peak inside the range, so TPE and GP have something to find."""
    return 0.9 - (rate - 0.35) ** 2


def drive(
    url: str,
    spec: StudySpec,
    batches: Sequence[int],
    score: Callable[[float], float] = bumpy,
    folds: Callable[[float], list[float]] | None = None,
) -> optuna.Study:
    """Batches as a worker runs them: open the study (a new sampler), create and suggest every
    trial of the batch (all RUNNING together), then tell them all; with `folds`, each trial's
    split scores are recorded as a worker records them and their mean is told."""
    storage = optuna_storage(url)
    name = queue.optuna_study_name(1)
    ensure_study(storage, name, spec, 1)
    for size in batches:
        study = open_study(storage, name, spec)
        trials = [new_trial(study, None, {}) for _ in range(size)]
        rates = [suggest(t, spec).hidden[0] for t in trials]  # one by one, as batch._open does
        assert all(t.number >= 0 for t in trials)
        for t, r in zip(trials, rates, strict=True):
            if folds is None:
                study.tell(t, score(r))
                continue
            split = folds(r)
            t.set_user_attr("fold_scores", split)
            t.set_user_attr("score_mean", statistics.fmean(split))
            t.set_user_attr("score_std", statistics.stdev(split))
            study.tell(t, statistics.fmean(split))
    return optuna.load_study(study_name=name, storage=storage)


def rates_of(study: optuna.Study) -> Rates:
    return {t.number: float(t.params["dropout"]) for t in study.trials}


def fresh(tmp_path: Path, tag: str) -> str:
    url = f"sqlite:///{tmp_path / f'{tag}.db'}"
    upgrade(url)
    return url


def test_gp_proposes_with_several_running_trials(tmp_path: Path) -> None:
    spec = make_spec("gp", 12)
    assert n_startup_trials(spec) == 3
    study = drive(fresh(tmp_path, "gp"), spec, [4, 4, 4])
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 12
    # After the first batch every trial came from the GP (its proposals are shared through a
    # system attribute), while the batch's earlier trials were still RUNNING.
    fitted = [t.number for t in trials if "gp:relative_params:0" in t.system_attrs]
    assert fitted == list(range(4, 12))
    for first in (4, 8):
        batch = [t.params["dropout"] for t in trials[first : first + 4]]
        assert len({round(r, 4) for r in batch}) == 4, batch  # qLogEI keeps them apart
        assert all(0.0 <= r <= 0.9 for r in batch)
    # The GP found the peak's neighbourhood, which random draws over [0, 0.9] rarely all do.
    assert min(abs(t.params["dropout"] - 0.35) for t in trials[4:]) < 0.05


@pytest.mark.parametrize("sampler", ["tpe", "gp", "random", "grid"])
def test_the_same_spec_and_batches_search_the_same_rates(tmp_path: Path, sampler: str) -> None:
    spec = make_spec(sampler, 12, seed=3)
    once = rates_of(drive(fresh(tmp_path, "a"), spec, [4, 4, 4]))
    again = rates_of(drive(fresh(tmp_path, "b"), spec, [4, 4, 4]))
    assert once == again and len(once) == 12
    other = rates_of(drive(fresh(tmp_path, "c"), make_spec(sampler, 12, seed=4), [4, 4, 4]))
    if sampler == "grid":  # the seed only shuffles the order of the same grid
        assert sorted(other.values()) == sorted(once.values()) and other != once
    else:
        assert other != once


@pytest.mark.parametrize("sampler", ["tpe", "gp", "random"])
def test_batches_do_not_replay_the_startup_draws(tmp_path: Path, sampler: str) -> None:
    spec = make_spec(sampler, 40)  # 10 startup trials: the first three batches are all draws
    assert n_startup_trials(spec) == 10
    rates = list(rates_of(drive(fresh(tmp_path, sampler), spec, [4, 4, 4, 4])).values())
    assert len({round(r, 6) for r in rates}) == 16, rates


@pytest.mark.parametrize("sampler", ["random", "grid"])
def test_random_and_grid_draw_by_trial_number_whatever_the_batching(
    tmp_path: Path, sampler: str
) -> None:
    """Trial n's rate depends on (seed, n) only: batches of any size, in any order, from any
    number of workers give the same rates."""
    spec = make_spec(sampler, 12)
    even = rates_of(drive(fresh(tmp_path, "a"), spec, [4, 4, 4]))
    ragged = rates_of(drive(fresh(tmp_path, "b"), spec, [1, 5, 2, 3, 1]))
    assert even == ragged


def test_tpe_and_gp_start_from_the_random_samplers_draws(tmp_path: Path) -> None:
    random = rates_of(drive(fresh(tmp_path, "r"), make_spec("random", 12), [4, 4, 4]))
    for sampler in ("tpe", "gp"):
        spec = make_spec(sampler, 12)
        startup = rates_of(drive(fresh(tmp_path, sampler), spec, [1, 1, 1]))
        assert startup == {n: random[n] for n in range(n_startup_trials(spec))}


def test_the_search_seed_defaults_to_the_cv_seed(tmp_path: Path) -> None:
    by_cv = make_spec("tpe", 8)
    by_cv.cv.seed = 7
    assert by_cv.search.seed is None
    explicit = make_spec("tpe", 8, seed=7)
    assert rates_of(drive(fresh(tmp_path, "a"), by_cv, [4, 4])) == rates_of(
        drive(fresh(tmp_path, "b"), explicit, [4, 4])
    )


# --- real workers ------------------------------------------------------------------------------


def run_worker(url: str, spec: StudySpec) -> list[optuna.trial.FrozenTrial]:
    """One study run to the end by one in-process worker (the real claim loop)."""
    sid = submits.enqueue(create_engine(url), spec, "local")
    w = Worker(WorkerSettings(database_url=url, device="cpu", threads=1, exit_when_idle=True))
    assert w.run() == 0
    assert study_row(url, sid).status == "succeeded"
    name = queue.optuna_study_name(sid, spec.name)
    return optuna.load_study(study_name=name, storage=url).trials


def test_one_worker_twice_gives_the_same_trials_and_answer(tmp_path: Path) -> None:
    spec = make_spec("tpe", 8, batch_trials=2)  # 2 startup trials, then three TPE batches
    first = run_worker(fresh(tmp_path, "a"), spec)
    second = run_worker(fresh(tmp_path, "b"), spec)
    assert [(t.number, t.params, t.user_attrs["fold_scores"]) for t in first] == [
        (t.number, t.params, t.user_attrs["fold_scores"]) for t in second
    ]
    assert len(first) == 8


def test_two_worker_processes_draw_the_same_random_rates(tmp_path: Path) -> None:
    spec = make_spec("random", 12, batch_trials=1)
    alone = {t.number: t.params["dropout"] for t in run_worker(fresh(tmp_path, "alone"), spec)}
    url = fresh(tmp_path, "pair")
    engine = create_engine(url)
    pair = [procs.worker(url, tmp_path / f"w{i}.log") for i in range(2)]
    try:
        procs.wait_until(lambda: registry.count_live(engine, 30) == 2, 90, "two live workers")
        sid = submits.enqueue(engine, spec, "local")
        procs.wait_until(lambda: study_row(engine, sid).status == "succeeded", 90, "the study")
    finally:
        codes = [procs.stop(p) for p in pair]
    assert codes == [0, 0]
    trials = optuna.load_study(study_name=queue.optuna_study_name(sid), storage=url).trials
    assert {t.number: t.params["dropout"] for t in trials} == alone
    # Both took part, so the numbers were handed out across two processes.
    assert len({t.user_attrs["worker"] for t in trials}) == 2


def _peaked_folds(rate: float) -> list[float]:
    """Three split scores around a peak at 0.3, differing a little from rate to rate (as real
    splits do), so the paired test can rule out rates far from the peak."""
    base = 0.95 - 2.0 * (rate - 0.3) ** 2
    return [
        base + d + 0.002 * math.sin(37.0 * rate * (i + 1)) for i, d in enumerate((-2e-3, 0, 2e-3))
    ]


def test_the_design_covers_the_range_then_refines_inside_the_tied_band(tmp_path: Path) -> None:
    spec = make_spec("design", 16)
    study = drive(fresh(tmp_path, "design"), spec, [8, 8], folds=_peaked_folds)
    rates = [t.params["dropout"] for t in study.trials]
    # The first stack is space-filling: one rate in each eighth of [0, 0.9].
    assert sorted(int(r / (0.9 / 8)) for r in rates[:8]) == list(range(8))
    # The second refines: inside the tied band of the first eight, widened by one spacing.
    low, high = refined_range(study.trials[:8], spec, 0.0, 0.9)
    assert 0.0 <= low < 0.3 < high <= 0.9 and high - low < 0.6, (low, high)
    assert all(low <= r <= high for r in rates[8:]), (rates[8:], low, high)
    assert len({round(r, 6) for r in rates}) == 16
    # Keyed by trial number and the study's history: the same spec searches the same rates.
    again = drive(fresh(tmp_path, "again"), spec, [8, 8], folds=_peaked_folds)
    assert [t.params["dropout"] for t in again.trials] == rates


def test_a_design_study_trains_a_first_design_then_narrower_refining_batches(
    tmp_path: Path,
) -> None:
    """30% of n_trials first (at least 6), then 15% (at least 3), within the open slots; other
    samplers keep a quarter of the study per batch."""
    url = fresh(tmp_path, "widths")
    w = Worker(WorkerSettings(database_url=url, device="cpu", threads=1, exit_when_idle=True))
    design = make_spec("design", 20)
    assert w.batch_size(design, 20) == 6  # nothing claimed yet: the first design
    assert w.batch_size(design, 14) == 3  # refining
    assert w.batch_size(design, 2) == 2  # the last open slots
    wide = make_spec("design", 60)
    assert (w.batch_size(wide, 60), w.batch_size(wide, 42)) == (16, 9)  # 18 capped by memory
    assert w.batch_size(make_spec("tpe", 20), 20) == 5


def _peaked_2d(trial_rates: Sequence[float]) -> list[float]:
    """Three split scores peaking at (0.2, 0.6), differing a little from point to point."""
    a, b = trial_rates
    base = 0.95 - 2.0 * ((a - 0.2) ** 2 + (b - 0.6) ** 2)
    return [
        base + d + 0.002 * math.sin(37.0 * (a + 2 * b) * (i + 1))
        for i, d in enumerate((-2e-3, 0, 2e-3))
    ]


def test_a_per_layer_design_refines_each_layer_inside_the_tied_trials_box(tmp_path: Path) -> None:
    spec = make_spec("design", 24, per_layer=True).model_copy(deep=True)
    spec = StudySpec.model_validate(spec.model_dump() | {"model": {"hidden": [16, 16]}})
    storage_url = fresh(tmp_path, "layers")
    storage = optuna_storage(storage_url)
    name = queue.optuna_study_name(1)
    ensure_study(storage, name, spec, 1)
    for size in (12, 12):
        study = open_study(storage, name, spec)
        trials = [new_trial(study, None, {}) for _ in range(size)]
        rates = [suggest(t, spec).hidden for t in trials]
        for t, r in zip(trials, rates, strict=True):
            split = _peaked_2d(r)
            t.set_user_attr("fold_scores", split)
            t.set_user_attr("score_mean", statistics.fmean(split))
            t.set_user_attr("score_std", statistics.stdev(split))
            study.tell(t, statistics.fmean(split))
    done = optuna.load_study(study_name=name, storage=storage).trials
    box = refined_box(done[:12], spec, 0.0, 0.9)
    assert set(box) == {"dropout_0", "dropout_1"}
    (lo0, hi0), (lo1, hi1) = box["dropout_0"], box["dropout_1"]
    # Each layer's range shrank around its own peak (0.2 and 0.6), not around the mean rate.
    assert lo0 < 0.2 < hi0 and lo1 < 0.6 < hi1 and (hi0 - lo0) + (hi1 - lo1) < 1.5, box
    for later in done[12:]:
        assert lo0 <= later.params["dropout_0"] <= hi0 and lo1 <= later.params["dropout_1"] <= hi1
