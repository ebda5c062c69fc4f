"""Recovery of lost leases, on SQLite and PostgreSQL alike: stale by the database clock, taken
over before anything is failed, the trial failed and its parameters retried exactly once."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from droptune.storage.jobs import queue, registry, stale
from droptune.storage.jobs.queue import Outcome
from droptune.storage.jobs.recovery import recover_stale
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.sql.tables import retries
from droptune.storage.submit import submits
from tests.queueing import age_leases, claimed, refit_done, spec, started_trial, study_row


def test_leases_compare_against_the_database_clock(db_url: str) -> None:
    engine = create_engine(db_url)
    submits.enqueue(engine, spec(1), "a")
    claim = queue.claim(engine, "w", 1)
    assert claim is not None
    # Put the heartbeat 60 s in the database's past: stale for a 30 s grace, fresh for 90 s.
    age_leases(engine, 60)
    assert [s.id for s in stale.stale_leases(engine, 30)] == [claim.leases[0].id]
    assert stale.stale_leases(engine, 90) == []


def test_recovery_fails_the_trial_and_requeues_its_params(db_url: str) -> None:
    engine, storage, sid, claim, _study, trial = started_trial(db_url, 2)
    age_leases(engine, 120)
    assert recover_stale(engine, storage, 30.0) == 2
    assert recover_stale(engine, storage, 30.0) == 0  # exactly once
    assert storage.get_trial(trial._trial_id).state == TrialState.FAIL
    assert "lease lost" in storage.get_trial(trial._trial_id).user_attrs["reason"]
    with transaction(engine) as conn:
        waiting = conn.execute(sa.select(retries)).all()
    assert [(w.params, w.attempt) for w in waiting] == [(trial.params, 1)]
    assert study_row(engine, sid).slots_claimed == 0
    # The lost worker comes back: its lease is gone, so it must not link or finish anything.
    assert not queue.link_trial(engine, claim.leases[0].id, 1, 1, {}, "dead")
    again = queue.claim(engine, "w2", 2)
    assert again is not None and sorted(x.attempt for x in again.leases) == [0, 1]


def test_recovery_of_a_finished_trial_counts_it_done(db_url: str) -> None:
    engine, storage, sid, claim, study, trial = started_trial(db_url, 1)
    study.tell(trial, 0.9)  # told, but the worker died before ending its lease
    age_leases(engine, 120)
    recover_stale(engine, storage, 30.0)
    assert storage.get_trial(trial._trial_id).state == TrialState.COMPLETE
    refit_done(engine, sid)
    assert study_row(engine, sid).status == "succeeded"
    loaded = optuna.load_study(study_name=claim.optuna_study, storage=db_url)
    assert len(loaded.trials) == 1


def test_recovery_fails_a_trial_its_worker_never_linked(db_url: str) -> None:
    from droptune.worker.run.objective import new_trial

    engine, storage, sid, claim, study = claimed(db_url, 1)
    # The worker created its trial, tagged with the lease, and died before linking it.
    trial = new_trial(study, None, {"lease": claim.leases[0].id})
    trial.suggest_float("dropout", 0.0, 0.8)
    age_leases(engine, 120)
    assert recover_stale(engine, storage, 30.0) == 1
    assert storage.get_trial(trial._trial_id).state == TrialState.FAIL
    assert study_row(engine, sid).slots_claimed == 0
    # Its parameters are retried like any lost trial's (they were never on the lease).
    again = queue.claim(engine, "w2", 1)
    assert again is not None and again.leases[0].params == trial.params


def test_a_slow_worker_cannot_link_a_lease_recovery_took_over(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery takes a stale unlinked lease over, then the worker (slow, not dead) tries to
    link its trial: refused, so the slot is given back exactly once and N trials finish."""
    from droptune.storage.jobs import recovery
    from droptune.worker.run.objective import new_trial

    engine, storage, sid, claim, study = claimed(db_url, 1, "slow")
    age_leases(engine, 120)
    lease_id = claim.leases[0].id
    real = recovery._fail_unlinked
    refused: list[bool] = []

    def worker_wakes_up(st: Any, lease: Any) -> None:
        real(st, lease)  # finds no trial yet
        trial = new_trial(study, None, {"lease": lease_id})
        trial.suggest_float("dropout", 0.0, 0.8)
        refused.append(
            not queue.link_trial(
                engine, lease_id, trial._trial_id, trial.number, trial.params, "slow"
            )
        )

    monkeypatch.setattr(recovery, "_fail_unlinked", worker_wakes_up)
    assert recover_stale(engine, storage, 30.0) == 1
    assert refused == [True]
    row = study_row(engine, sid)
    assert (row.slots_claimed, row.n_done) == (0, 0)
    again = queue.claim(engine, "other", 1)  # the slot is open again, once
    assert again is not None and len(again.leases) == 1
    assert queue.claim(engine, "third", 1) is None


def test_recovery_leaves_a_lease_that_heartbeat_after_the_stale_read(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery read the lease as stale; its worker heartbeat before recovery acted: the worker
    keeps its lease and its trial stays RUNNING (nothing is failed on a stale read)."""
    engine, storage, sid, claim, _study, trial = started_trial(db_url, 1)
    registry.register(engine, "dead", "h", 1, "cpu")
    age_leases(engine, 120)
    real = stale.stale_leases

    def read_then_worker_beats(eng: Any, grace: float) -> Any:
        stale = real(eng, grace)
        registry.heartbeat(engine, "dead", sid, [], [claim.leases[0].id])  # alive after all
        return stale

    monkeypatch.setattr("droptune.storage.jobs.recovery.stale_leases", read_then_worker_beats)
    assert recover_stale(engine, storage, 30.0) == 0
    assert storage.get_trial(trial._trial_id).state == TrialState.RUNNING
    assert stale.live_lease_ids(engine, [claim.leases[0].id]) == {claim.leases[0].id}
    assert study_row(engine, sid).slots_claimed == 1


def test_recovery_leaves_an_unlinked_lease_that_heartbeat_meanwhile(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = submits.enqueue(engine, spec(1), "a")
    claim = queue.claim(engine, "slow", 1)
    assert claim is not None
    age_leases(engine, 120)
    found = stale.stale_leases(engine, 30.0)
    assert [s.id for s in found] == [claim.leases[0].id]
    registry.register(engine, "slow", "h", 1, "cpu")
    registry.heartbeat(engine, "slow", sid, [], [claim.leases[0].id])  # it is alive after all
    assert stale.take_stale(engine, claim.leases[0].id, 30.0) == (False, None)
    assert not stale.release_unlinked(engine, claim.leases[0].id)
    assert study_row(engine, sid).slots_claimed == 1


def test_optuna_checks_and_finishes_a_trial_in_one_sqlite_write_transaction(
    sqlite_url: str,
) -> None:
    """Optuna reads a trial's state, checks it is RUNNING, then writes. On SQLite that must hold
    the write lock from the read on, or a worker's COMPLETE and a recovery's FAIL both win."""
    import sqlite3

    _, storage, _, _, _, trial = started_trial(sqlite_url, 1)
    path = sa.make_url(sqlite_url).database
    assert path is not None
    seen: list[str] = []

    def other_writer(conn: Any, cursor: Any, statement: str, *_a: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "trials" in statement and not seen:
            other = sqlite3.connect(path, timeout=0.2)
            try:
                other.execute("UPDATE trials SET state = 'COMPLETE' WHERE trial_id = ?", [1])
                other.commit()
                seen.append("other writer got in between the check and the write")
            except sqlite3.OperationalError as exc:
                seen.append(str(exc))
            finally:
                other.close()

    sa.event.listen(storage.engine, "before_cursor_execute", other_writer)
    try:
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    finally:
        sa.event.remove(storage.engine, "before_cursor_execute", other_writer)
    assert seen == ["database is locked"]
    assert storage.get_trial(trial._trial_id).state == TrialState.FAIL


def test_recovery_fails_running_trials_whose_lease_is_gone(db_url: str) -> None:
    """A worker that died between losing its lease and failing its trial leaves the trial
    RUNNING with no lease to recover: the sweep fails it; trials with live leases are left."""
    from droptune.storage.jobs.lifecycle import ORPHANED
    from droptune.worker.run.objective import new_trial

    engine, storage, sid, claim, study, running = started_trial(db_url, 2)
    gone, kept = claim.leases
    orphan = new_trial(study, None, {"lease": gone.id})
    assert queue.finish(engine, gone.id, Outcome.RELEASED)  # its lease ended elsewhere
    alive = new_trial(study, None, {"lease": kept.id})
    outsider = new_trial(study, None, {})  # not droptune's: no lease tag, left alone
    texted = new_trial(study, None, {"lease": str(gone.id)})  # not an integer: not a lease
    done = new_trial(study, None, {"lease": gone.id})
    storage.set_trial_state_values(done._trial_id, state=TrialState.COMPLETE, values=[0.5])
    recover_stale(engine, storage, 30.0)
    assert storage.get_trial(texted._trial_id).state == TrialState.RUNNING
    assert storage.get_trial(done._trial_id).state == TrialState.COMPLETE
    assert storage.get_trial(orphan._trial_id).state == TrialState.FAIL
    assert storage.get_trial(orphan._trial_id).user_attrs["reason"] == ORPHANED
    assert storage.get_trial(alive._trial_id).state == TrialState.RUNNING
    assert storage.get_trial(outsider._trial_id).state == TrialState.RUNNING
    # `running` (started_trial's) is linked to a live lease but carries no tag: untouched.
    assert storage.get_trial(running._trial_id).state == TrialState.RUNNING
    assert study_row(engine, sid).slots_claimed == 1


def test_one_lease_that_cannot_be_recovered_does_not_stop_the_others(db_url: str) -> None:
    engine, storage, _, claim, _, trial = started_trial(db_url, 2)
    broken = claim.leases[1]
    # Linked to a trial that does not exist (deleted behind droptune's back, say).
    queue.link_trial(engine, broken.id, 987_654, 99, {"dropout": 0.1}, "dead")
    age_leases(engine, 120)
    assert recover_stale(engine, storage, 30.0) == 1
    assert storage.get_trial(trial._trial_id).state == TrialState.FAIL
    assert stale.live_lease_ids(engine, [broken.id, claim.leases[0].id]) == {broken.id}
