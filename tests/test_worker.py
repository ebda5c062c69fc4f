"""The worker in-process on a real SQLite file: every model kind, sampler, pruner and metric."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from storage import queue
from storage.db import create_engine, transaction
from storage.optuna_bridge import optuna_storage
from storage.reads import Reader
from storage.spec import StudySpec
from storage.tables import studies
from worker.loop import Worker
from worker.settings import WorkerSettings

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
    sid = queue.enqueue(engine, spec, "local")
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
    engine = create_engine(sqlite_url)
    with transaction(engine) as conn:
        row = conn.execute(sa.select(studies).where(studies.c.id == sid)).one()
    assert (row.status, row.n_done) == ("succeeded", n)
    best = Reader(engine, optuna_storage(sqlite_url)).best(sid, "local")
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
    import worker.batch

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(worker.batch, "train_trials", boom)
    sid, trials = run_study(
        sqlite_url, {"search": {"n_trials": 1, "max_retries": 1, "max_failed": 1}}
    )
    engine = create_engine(sqlite_url)
    with transaction(engine) as conn:
        row = conn.execute(sa.select(studies).where(studies.c.id == sid)).one()
    assert row.status == "failed" and "out of memory (simulated)" in row.reason
    # 2 give-ups (past max_failed=1), each after 1 retry: 4 failed trials, every one with a reason
    assert len(trials) == 4 and all(t.state == TrialState.FAIL for t in trials)
    assert all("out of memory" in t.user_attrs["reason"] for t in trials)
    attempts = sorted(t.user_attrs["attempt"] for t in trials)
    assert attempts == [0, 0, 1, 1]
