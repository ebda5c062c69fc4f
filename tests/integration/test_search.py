"""The search built for one noisy dimension (issue 21) through a real in-process worker: the
design sampler, the paired pruner and the stopping rule together."""

from __future__ import annotations

from droptune.storage.optuna_bridge import optuna_storage
from droptune.storage.readmodel.reads import Reader
from droptune.storage.sql.db import create_engine
from tests.integration.test_worker import run_study
from tests.queueing import study_row


def test_a_settled_search_stops_before_its_cap(sqlite_url: str) -> None:
    """search.stop_when_settled with the design sampler and the paired pruner: on iris the
    answer stops moving after three batches of eight, so the study ends at 24 of at most 40
    trials, refits as usual, and /best says why."""
    patch = {
        "search": {
            "n_trials": 40,
            "batch_trials": 8,
            "sampler": "design",
            "pruner": "paired",
            "stop_when_settled": True,
        },
        "training": {"epochs": 10},
    }
    sid, trials = run_study(sqlite_url, patch)
    row = study_row(sqlite_url, sid)
    assert row.status == "succeeded" and row.n_trials == len(trials) < 40
    best = Reader(create_engine(sqlite_url), optuna_storage(sqlite_url)).best(sid, "local")
    assert best.stopped is not None
    assert best.stopped.startswith(f"search settled after {len(trials)} of at most 40 trials")
