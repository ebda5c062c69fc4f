"""The worker in-process on a real SQLite file: every model kind, sampler, pruner and metric."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

import droptune.worker.run.batch
import droptune.worker.run.loop
from droptune.core.spec.study import StudySpec
from droptune.storage.jobs import queue
from droptune.storage.optuna_bridge import optuna_storage
from droptune.storage.readmodel.reads import Reader
from droptune.storage.sql.db import create_engine
from droptune.storage.submit import submits
from droptune.worker.engine.kinds import ModelKind
from droptune.worker.run.loop import Worker
from droptune.worker.run.settings import WorkerSettings
from tests.queueing import study_row

TINY: dict[str, Any] = {
    "dataset": {"builtin": "digits"},
    "model": {"hidden": [16]},
    "training": {"epochs": 2},
    "cv": {"folds": 3},
}


def run_study(url: str, patch: dict[str, Any]) -> tuple[int, list[optuna.trial.FrozenTrial]]:
    body = {**TINY, **patch}
    spec = StudySpec.model_validate(body)
    engine = create_engine(url)
    sid = submits.enqueue(engine, spec, "local")
    w = Worker(WorkerSettings(database_url=url, device="cpu", threads=1, exit_when_idle=True))
    assert w.run() == 0
    trials = optuna.load_study(study_name=queue.optuna_study_name(sid), storage=url).trials
    return sid, trials


@pytest.mark.parametrize(
    ("patch", "params"),
    [
        (
            {"search": {"n_trials": 3, "per_layer": True}, "model": {"hidden": [16, 8]}},
            {"dropout_0", "dropout_1"},
        ),
        ({"search": {"n_trials": 3, "input_dropout_high": 0.3}}, {"dropout", "input_dropout"}),
        (
            {
                "search": {"n_trials": 2},
                "model": {"kind": "cnn", "channels": [4, 8], "hidden": [16]},
            },
            {"dropout"},
        ),
        ({"search": {"n_trials": 4, "sampler": "grid", "pruner": "none"}}, {"dropout"}),
        (
            {
                "search": {"n_trials": 6, "sampler": "design", "pruner": "paired"},
                "training": {"epochs": 5},
            },
            {"dropout"},
        ),
        (
            {
                "search": {"n_trials": 3, "sampler": "random", "pruner": "hyperband"},
                "cv": {"folds": 3, "metric": "log_loss"},
            },
            {"dropout"},
        ),
    ],
)
def test_each_kind_of_study_runs_to_the_end(
    sqlite_url: str, patch: dict[str, Any], params: set[str]
) -> None:
    sid, trials = run_study(sqlite_url, patch)
    n = patch["search"]["n_trials"]
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n and len(trials) == n
    for t in finished:
        assert set(t.params) == params
        assert len(t.user_attrs["fold_scores"]) == 3
        assert t.user_attrs["device"] == "cpu"
    row = study_row(sqlite_url, sid)
    assert (row.status, row.n_done) == ("succeeded", n)
    best = Reader(create_engine(sqlite_url), optuna_storage(sqlite_url)).best(sid, "local")
    assert best.complete and best.dropout is not None and best.one_se_dropout is not None
    if patch.get("cv", {}).get("metric") == "log_loss":
        assert best.direction == "minimize" and best.score is not None and best.score.mean > 0


def test_grid_visits_evenly_spaced_rates(sqlite_url: str) -> None:
    _, trials = run_study(
        sqlite_url,
        {
            "search": {
                "n_trials": 5,
                "sampler": "grid",
                "pruner": "none",
                "dropout_low": 0.0,
                "dropout_high": 0.4,
            }
        },
    )
    assert sorted(round(t.params["dropout"], 6) for t in trials) == [0.0, 0.1, 0.2, 0.3, 0.4]


def test_a_failing_batch_is_retried_then_given_up(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(ModelKind, "train", boom)
    sid, trials = run_study(
        sqlite_url, {"search": {"n_trials": 1, "max_retries": 1, "max_failed": 1}}
    )
    row = study_row(sqlite_url, sid)
    assert row.status == "failed" and "out of memory (simulated)" in row.reason
    # 2 give-ups (past max_failed=1), each after 1 retry: 4 failed trials, every one with a reason
    assert len(trials) == 4 and all(t.state == TrialState.FAIL for t in trials)
    assert all("out of memory" in t.user_attrs["reason"] for t in trials)
    attempts = sorted(t.user_attrs["attempt"] for t in trials)
    assert attempts == [0, 0, 1, 1]


def test_a_diverged_trial_is_failed_not_completed(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from droptune.worker.engine.stacked import TrialResult

    def diverge(*_a: object, **_k: object) -> list[TrialResult]:
        return [TrialResult([float("nan")] * 3, 2, False, 0.1)]

    monkeypatch.setattr(
        ModelKind, "train", lambda _kind, *a, **k: (diverge(*a, **k), None, "stacked")
    )
    sid, trials = run_study(
        sqlite_url, {"search": {"n_trials": 1, "max_retries": 0, "max_failed": 0}}
    )
    assert [t.state for t in trials] == [TrialState.FAIL]
    assert "non-finite" in trials[0].user_attrs["reason"]
    row = study_row(sqlite_url, sid)
    assert row.status == "failed" and "non-finite" in row.reason


def test_a_trial_pruned_on_a_non_finite_score_stays_pruned(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna's median pruner stops a NaN (past its startup trials): that is PRUNED, not a
    failure to retry. Here the pruner is made to say so at once."""
    from droptune.worker.engine.stacked import TrialResult

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)

    def diverge(*args: Any) -> list[TrialResult]:
        on_epoch = args[5]
        stop = list(on_epoch(1, [0], np.full((1, 3), np.nan)) or [])
        return [TrialResult([float("nan")] * 3, 1, bool(stop), 0.1)]

    monkeypatch.setattr(
        ModelKind, "train", lambda _kind, *a, **k: (diverge(*a, **k), None, "stacked")
    )
    sid, trials = run_study(
        sqlite_url, {"search": {"n_trials": 1, "pruner": "median", "max_failed": 0}}
    )
    assert [t.state for t in trials] == [TrialState.PRUNED]
    assert "non-finite" in trials[0].user_attrs["reason"]
    assert "fold_scores" not in trials[0].user_attrs
    assert study_row(sqlite_url, sid).status == "succeeded"


def test_a_data_set_that_cannot_load_fails_the_study_not_the_worker(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:

    def unreadable(*_a: object, **_k: object) -> None:
        raise OSError("data file unreadable (simulated)")

    monkeypatch.setattr(droptune.worker.run.datasets, "load_dataset", unreadable)
    sid, trials = run_study(
        sqlite_url, {"search": {"n_trials": 2, "max_retries": 0, "max_failed": 1}}
    )
    row = study_row(sqlite_url, sid)
    assert row.status == "failed" and "data file unreadable" in row.reason
    assert trials and all(t.state == TrialState.FAIL for t in trials)
    assert all("data file unreadable" in t.user_attrs["reason"] for t in trials)


def test_an_optuna_error_opening_a_study_releases_the_claim(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from droptune.storage.optuna_bridge import ensure_study as real

    calls = []

    def flaky(*a: Any, **k: Any) -> optuna.Study:
        calls.append(1)
        if len(calls) == 1:
            raise optuna.exceptions.StorageInternalError("simulated storage hiccup")
        return real(*a, **k)

    monkeypatch.setattr(droptune.worker.run.loop, "ensure_study", flaky)
    sid, trials = run_study(sqlite_url, {"search": {"n_trials": 2}})
    row = study_row(sqlite_url, sid)
    assert len(calls) >= 2  # the worker lived on and claimed again
    assert (row.status, row.n_done, row.slots_claimed) == ("succeeded", 2, 2)
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE"]


def test_a_trial_failed_elsewhere_mid_training_is_retried(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery (thinking the worker lost) fails a trial while it trains: the worker stops that
    member, ends its lease as failed, and the parameters run again; N trials still finish."""
    import droptune.worker.run.batch
    from droptune.storage.jobs.lifecycle import fail_trial

    real = droptune.worker.run.batch.BatchRunner._on_epoch
    done: list[int] = []

    def meddle(self: Any, claim: Any, members: Any, epoch: int, *rest: Any) -> Any:
        if not done:
            victim = members[0].trial._trial_id
            fail_trial(self.ctx.optuna, victim, "lease lost: recovered (simulated)")
            done.append(victim)
        return real(self, claim, members, epoch, *rest)

    monkeypatch.setattr(droptune.worker.run.batch.BatchRunner, "_on_epoch", meddle)
    sid, trials = run_study(
        sqlite_url, {"search": {"n_trials": 3, "pruner": "none", "batch_trials": 3}}
    )
    row = study_row(sqlite_url, sid)
    assert (row.status, row.n_done, row.refit_state) == ("succeeded", 3, "done")
    by_id = {t._trial_id: t for t in trials}
    failed = by_id[done[0]]
    assert failed.state == TrialState.FAIL
    retried = [t for t in trials if t.user_attrs.get("attempt") == 1]
    assert [t.params for t in retried] == [failed.params]
    assert retried[0].state == TrialState.COMPLETE
    # Its batch mates trained on undisturbed: 3 complete of 4 trials in all.
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3 and len(trials) == 4


def test_a_trial_pruned_before_a_cancel_stays_pruned(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import droptune.worker.run.batch

    real = droptune.worker.run.batch.BatchRunner._on_epoch

    def prune_then_cancel(self: Any, claim: Any, members: Any, epoch: int, *rest: Any) -> Any:
        if epoch == 1:
            members[0].pruned = True  # the pruner stopped it at the first epoch
            return [0]
        # Heartbeats are 5 s apart, epochs milliseconds: the cancel must be seen at this epoch.
        queue.cancel(self.ctx.engine, claim.study_id, "local")
        return real(self, claim, members, epoch, *rest)

    monkeypatch.setattr(droptune.worker.run.batch.BatchRunner, "_on_epoch", prune_then_cancel)
    sid, trials = run_study(
        sqlite_url,
        {"training": {"epochs": 3}, "search": {"n_trials": 2, "batch_trials": 2}},
    )
    assert study_row(sqlite_url, sid).status == "cancelled"
    states = sorted((t.number, t.state.name, t.user_attrs.get("reason")) for t in trials)
    assert states == [(0, "PRUNED", None), (1, "FAIL", "cancelled")]
