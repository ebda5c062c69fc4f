"""The lifecycle table, one row at a time, without processes: `settle` ends the Optuna trial as
the row says, and the slot comes back (or not) as the row says."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from droptune.storage.jobs.lifecycle import NO_TRIAL, OUTCOMES, Why, settle
from droptune.storage.jobs.queue import Outcome
from droptune.storage.sql.db import transaction
from droptune.storage.sql.tables import leases, retries
from tests.queueing import started_trial, study_row

# why -> the state a running trial is left in
TOLD = {Why.TRAINED: TrialState.COMPLETE, Why.PRUNED: TrialState.PRUNED}


def _slot(engine: sa.Engine, sid: int) -> tuple[int, int, list[int]]:
    """(slots claimed, trials done, attempts of the parameters waiting to be retried)."""
    row = study_row(engine, sid)
    with transaction(engine) as conn:
        waiting = conn.execute(sa.select(retries.c.attempt).where(retries.c.study_id == sid))
        return int(row.slots_claimed), int(row.n_done), [int(a) for a in waiting.scalars()]


def _lease_count(engine: sa.Engine) -> int:
    with transaction(engine) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(leases)).scalar_one())


def test_the_table_covers_every_state_and_why() -> None:
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, NO_TRIAL)
    assert set(OUTCOMES) == {(s, w) for s in states for w in Why}


@pytest.mark.parametrize("why", list(Why))
def test_a_running_trial(sqlite_url: str, why: Why) -> None:
    engine, storage, sid, claim, _study, trial = started_trial(sqlite_url, 2)
    lease = claim.leases[0]
    kw: dict[str, Any] = {"value": 0.5} if why is Why.TRAINED else {}
    outcome = settle(engine, storage, lease.id, trial._trial_id, why, **kw)
    state = storage.get_trial(trial._trial_id).state
    assert state == TOLD.get(why, TrialState.FAIL)
    assert outcome is OUTCOMES[(state, why)]
    if state == TrialState.FAIL:
        assert storage.get_trial(trial._trial_id).user_attrs["reason"] == why.value
    assert _lease_count(engine) == 1  # the other lease of the claim
    claimed, done, waiting = _slot(engine, sid)
    expected = {
        Outcome.DONE: (2, 1, []),
        Outcome.FAILED: (1, 0, [1]),  # the parameters again, one attempt counted
        Outcome.RELEASED: (1, 0, [0]),  # the parameters again, no attempt counted
        Outcome.DROPPED: (2, 0, []),  # nothing given back
    }
    assert (claimed, done, waiting) == expected[outcome]


@pytest.mark.parametrize("why", list(Why))
def test_a_trial_finished_elsewhere_first_counts_as_done(sqlite_url: str, why: Why) -> None:
    engine, storage, sid, claim, study, trial = started_trial(sqlite_url, 2)
    study.tell(trial, 0.9)  # e.g. its worker told it just before recovery came
    outcome = settle(engine, storage, claim.leases[0].id, trial._trial_id, why, value=0.1)
    assert outcome is Outcome.DONE
    assert storage.get_trial(trial._trial_id).value == 0.9  # told once, never changed
    assert _slot(engine, sid) == (2, 1, [])


@pytest.mark.parametrize("why", list(Why))
def test_a_lease_without_a_trial(sqlite_url: str, why: Why) -> None:
    engine, storage, sid, claim, _study, _trial = started_trial(sqlite_url, 2)
    unlinked = claim.leases[1]
    outcome = settle(engine, storage, unlinked.id, NO_TRIAL, why)
    assert outcome is OUTCOMES[(NO_TRIAL, why)]
    claimed, done, waiting = _slot(engine, sid)
    if outcome is Outcome.DROPPED:
        assert (claimed, done, waiting) == (2, 0, [])
    else:
        assert outcome is Outcome.RELEASED
        assert (claimed, done, waiting) == (1, 0, [])  # no parameters: a fresh slot


def test_a_database_that_stays_away_leaves_the_lease_to_recovery(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from droptune.core.errors import StorageError
    from droptune.storage.jobs import queue

    engine, storage, _sid, claim, _study, trial = started_trial(sqlite_url, 2)
    calls: list[int] = []

    def down(*_a: object, **_k: object) -> bool:
        calls.append(1)
        raise StorageError("database error: simulated")

    monkeypatch.setattr(queue, "finish", down)
    lease = claim.leases[0]
    outcome = settle(engine, storage, lease.id, trial._trial_id, Why.ERROR, attempts=3)
    assert outcome is None and len(calls) == 3  # retried, then left
    assert storage.get_trial(trial._trial_id).state == TrialState.FAIL  # Optuna first
    assert _lease_count(engine) == 2  # the lease goes stale; recovery reads the trial's state


def test_a_trial_that_cannot_be_told_is_failed_not_left_running(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, storage, _sid, claim, study, trial = started_trial(sqlite_url, 2)

    def refuse(*_a: object, **_k: object) -> None:
        raise RuntimeError("simulated: the tell went wrong")

    monkeypatch.setattr(study, "tell", refuse)
    outcome = settle(engine, storage, claim.leases[0].id, trial._trial_id, Why.PRUNED, trial=trial)
    assert storage.get_trial(trial._trial_id).state == TrialState.FAIL
    assert outcome is Outcome.FAILED


def test_a_bug_while_ending_a_trial_propagates_but_an_outage_is_left_to_recovery(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, storage, _sid, claim, _study, trial = started_trial(sqlite_url, 2)
    lease = claim.leases[0].id

    def bug(*_a: object, **_k: object) -> None:
        raise sa.exc.NoResultFound("simulated bug")

    monkeypatch.setattr(storage, "set_trial_user_attr", bug)
    with pytest.raises(sa.exc.NoResultFound):
        settle(engine, storage, lease, trial._trial_id, Why.ERROR)

    def away(*_a: object, **_k: object) -> None:
        raise sa.exc.OperationalError("SELECT 1", {}, ConnectionError("simulated outage"))

    monkeypatch.setattr(storage, "set_trial_user_attr", away)
    assert settle(engine, storage, lease, trial._trial_id, Why.ERROR) is None
    assert _lease_count(engine) == 2  # both times the lease stayed
