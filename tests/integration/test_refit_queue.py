"""The final refit as a leased job, on both databases: when it becomes claimable, how each of
its ends changes the study, and recovery of a refit whose worker died."""

from __future__ import annotations

import sqlalchemy as sa

from droptune.core.spec.study import StudySpec
from droptune.storage import datasets
from droptune.storage.jobs import queue, refits
from droptune.storage.jobs.recovery import recover_stale
from droptune.storage.optuna_bridge import optuna_storage
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.sql.tables import leases, models
from droptune.storage.submit import submits
from tests.queueing import age_leases, study_row


def _spec(n: int, holdout: float, retries: int = 1) -> StudySpec:
    return StudySpec.model_validate(
        {
            "dataset": {"builtin": "wine"},
            "search": {"n_trials": n, "max_retries": retries},
            "evaluation": {"holdout": holdout},
        }
    )


def _search_done(engine: sa.Engine, n: int, holdout: float = 0.2, retries: int = 1) -> int:
    """A study whose n trials have all been told: its search is over."""
    sid = submits.enqueue(engine, _spec(n, holdout, retries), "a")
    claim = queue.claim(engine, "w", n)
    assert claim is not None
    for lease in claim.leases:
        assert queue.finish(engine, lease.id, queue.Outcome.DONE)
    return sid


def test_search_end_makes_the_refit_claimable_and_the_study_waits(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = _search_done(engine, 2)
    row = study_row(engine, sid)
    assert (row.status, row.refit_state) == ("running", "ready")
    assert queue.peek(engine) is None  # no trial slot is open
    c = refits.claim(engine, "w1")
    assert c is not None and c.study_id == sid
    assert refits.claim(engine, "w2") is None  # one refit, one worker
    assert study_row(engine, sid).refit_state == "running"
    with transaction(engine) as conn:
        kind = conn.execute(sa.select(leases.c.kind).where(leases.c.id == c.lease_id)).scalar()
    assert kind == "refit"
    result = {"dropout": 0.3, "score": 0.9, "ci95": [0.8, 0.95], "n": 36, "source": "holdout"}
    files = [refits.ModelFile("recommended", 0.3, {"dropout": 0.3}, b"pt2")]
    assert refits.complete(engine, c, "w1", result, files)
    row = study_row(engine, sid)
    assert (row.status, row.refit_state, row.refit_result) == ("succeeded", "done", result)
    got = refits.model_file(engine, sid, "recommended")
    assert got is not None and got.data == b"pt2" and got.dropout == 0.3
    assert refits.model_file(engine, sid, "best") is None


def test_a_study_without_held_out_rows_still_ends_with_a_model(db_url: str) -> None:
    """Issue 22: small tables (no holdout by default) got no model; now their refit runs on
    every row and stores the model with no test score."""
    engine = create_engine(db_url)
    sid = _search_done(engine, 2, holdout=0.0)
    row = study_row(engine, sid)
    assert (row.status, row.refit_state) == ("running", "ready")
    c = refits.claim(engine, "w")
    assert c is not None and c.study_id == sid and not c.spec.evaluation.has_unseen
    files = [refits.ModelFile("recommended", 0.3, {"dropout": 0.3}, b"pt2")]
    assert refits.complete(engine, c, "w", None, files)
    row = study_row(engine, sid)
    assert (row.status, row.refit_state, row.refit_result) == ("succeeded", "done", None)
    got = refits.model_file(engine, sid, "recommended")
    assert got is not None and got.data == b"pt2"


def test_failed_refits_are_retried_then_fail_the_study(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = _search_done(engine, 1, retries=1)
    for attempt in (1, 2):
        c = refits.claim(engine, "w")
        assert c is not None and c.attempt == attempt - 1
        assert refits.give_back(engine, c, "w", failed=True, reason="ValueError: boom")
    row = study_row(engine, sid)
    assert (row.status, row.refit_state) == ("failed", "skipped")
    assert "the final refit failed 2 times; last: ValueError: boom" in row.reason
    assert refits.claim(engine, "w") is None


def test_a_shutdown_gives_the_refit_back_without_an_attempt(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = _search_done(engine, 1, retries=0)
    c = refits.claim(engine, "w")
    assert c is not None
    assert refits.give_back(engine, c, "w", failed=False, reason="worker shutdown")
    row = study_row(engine, sid)
    assert (row.status, row.refit_state, row.refit_attempts) == ("running", "ready", 0)


def test_a_dead_workers_refit_is_recovered_and_counts_an_attempt(db_url: str) -> None:
    engine = create_engine(db_url)
    storage = optuna_storage(db_url)
    sid = _search_done(engine, 1, retries=2)
    c = refits.claim(engine, "dead")
    assert c is not None
    age_leases(engine, 120)
    assert recover_stale(engine, storage, 30) == 1
    row = study_row(engine, sid)
    assert (row.status, row.refit_state, row.refit_attempts) == ("running", "ready", 1)
    # The dead worker comes back: its lease is gone, so it can store nothing.
    assert not refits.complete(engine, c, "dead", {"score": 1.0}, [])
    assert study_row(engine, sid).status == "running"
    again = refits.claim(engine, "alive")
    assert again is not None and again.attempt == 1


def test_a_cancel_during_the_refit_stores_nothing(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = _search_done(engine, 1)
    c = refits.claim(engine, "w")
    assert c is not None
    queue.cancel(engine, sid, "a")
    files = [refits.ModelFile("recommended", 0.3, {}, b"x")]
    assert not refits.complete(engine, c, "w", {"score": 1.0}, files)
    row = study_row(engine, sid)
    assert (row.status, row.refit_state, row.refit_result) == ("cancelled", "skipped", None)
    with transaction(engine) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(models)).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(leases)).scalar() == 0


def test_a_study_cancelled_during_its_search_never_refits(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = submits.enqueue(engine, _spec(2, 0.2), "a")
    queue.cancel(engine, sid, "a")
    assert study_row(engine, sid).refit_state == "skipped"
    none = submits.enqueue(engine, _spec(2, 0.0), "a")  # no holdout: a refit all the same
    queue.cancel(engine, none, "a")
    assert study_row(engine, none).refit_state == "skipped"


def test_the_optuna_study_carries_the_studys_name(db_url: str) -> None:
    engine = create_engine(db_url)
    spec = _spec(1, 0.0).model_copy(update={"name": "wine dropout"})
    sid = submits.enqueue(engine, spec, "a")
    # the dashboard lists Optuna studies by this name
    assert study_row(engine, sid).optuna_study == f"wine dropout (droptune-{sid})"


def test_a_test_data_sets_columns_are_compared_by_name_and_kind() -> None:
    diff = datasets._column_difference
    train = {"a": "numeric", "b": "categorical"}
    assert diff(train, {"b": "categorical", "a": "numeric"}) is None  # another order is fine
    assert diff(train, {"a": "numeric"}) == "it lacks column(s) ['b']"
    got = diff(train, {"a": "categorical", "b": "categorical", "c": "numeric"})
    assert got == "it has column(s) the search never saw ['c']; 'a' is categorical, not numeric"
