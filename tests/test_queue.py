"""The queue's contract, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import time
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from storage import queue, registry
from storage.db import create_engine, db_now, transaction
from storage.errors import Conflict, NotFound
from storage.optuna_bridge import ensure_study, optuna_storage
from storage.queue import Outcome
from storage.reads import Reader
from storage.recovery import recover_stale
from storage.spec import StudySpec
from storage.tables import leases, retries, studies


def spec(n: int = 5, **search: object) -> StudySpec:
    return StudySpec.model_validate(
        {"dataset": {"builtin": "iris"}, "search": {"n_trials": n, **search}}
    )


def study_row(engine: sa.Engine, study_id: int) -> sa.Row[object]:
    with transaction(engine) as conn:
        return conn.execute(sa.select(studies).where(studies.c.id == study_id)).one()


def claimed(
    db_url: str, n: int, worker: str = "dead"
) -> tuple[sa.Engine, Any, int, queue.Claim, optuna.Study]:
    """A study of n slots, all claimed by one worker, its Optuna study created."""
    engine = create_engine(db_url)
    storage = optuna_storage(db_url)
    sp = spec(n)
    sid = queue.enqueue(engine, sp, "a")
    claim = queue.claim(engine, worker, n)
    assert claim is not None
    study = ensure_study(storage, claim.optuna_study, sp, sid)
    return engine, storage, sid, claim, study


def started_trial(
    db_url: str, n: int
) -> tuple[sa.Engine, Any, int, queue.Claim, optuna.Study, optuna.Trial]:
    """A study of n slots, all claimed by one worker, the first running a linked Optuna trial."""
    engine, storage, sid, claim, study = claimed(db_url, n)
    trial = study.ask()
    trial.suggest_float("dropout", 0.0, 0.8)
    queue.link_trial(
        engine, claim.leases[0].id, trial._trial_id, trial.number, trial.params, "dead"
    )
    return engine, storage, sid, claim, study, trial


def age_leases(engine: sa.Engine, seconds: float) -> None:
    """Put every lease's heartbeat `seconds` into the database clock's past."""
    with transaction(engine) as conn:
        conn.execute(leases.update().values(heartbeat_at=db_now(-seconds)))


def test_claim_reserves_slots_and_never_more_than_n_trials(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = queue.enqueue(engine, spec(5), "alice")
    assert study_row(engine, sid).status == "queued"
    first = queue.claim(engine, "w1", 3)
    assert first is not None and first.study_id == sid and len(first.leases) == 3
    assert study_row(engine, sid).status == "running"
    second = queue.claim(engine, "w2", 3)
    assert second is not None and len(second.leases) == 2
    assert queue.claim(engine, "w3", 3) is None
    ids = [lease.id for lease in first.leases + second.leases]
    assert len(set(ids)) == 5
    assert study_row(engine, sid).slots_claimed == 5


def test_claim_picks_by_priority_then_age(db_url: str) -> None:
    engine = create_engine(db_url)
    old = queue.enqueue(engine, spec(1), "a")
    urgent = queue.enqueue(
        engine,
        spec(
            1,
        ).model_copy(update={"priority": 5}),
        "a",
    )
    young = queue.enqueue(engine, spec(1), "a")
    order = [queue.claim(engine, "w", 1) for _ in range(3)]
    assert [c.study_id for c in order if c] == [urgent, old, young]


def test_done_trials_complete_the_study(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = queue.enqueue(engine, spec(3), "a")
    claim = queue.claim(engine, "w", 3)
    assert claim is not None
    for lease in claim.leases:
        assert queue.finish(engine, lease.id, Outcome.DONE)
    row = study_row(engine, sid)
    assert (row.status, row.n_done) == ("succeeded", 3)
    assert row.ended_at is not None
    # A lease can end once only, and its id is never handed out again (a lost worker that
    # comes back must not end somebody else's lease).
    assert not queue.finish(engine, claim.leases[0].id, Outcome.DONE)
    queue.enqueue(engine, spec(1), "a")
    later = queue.claim(engine, "w", 1)
    assert later is not None and later.leases[0].id > max(x.id for x in claim.leases)


def test_failed_trial_retries_its_params_then_gives_up(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = queue.enqueue(engine, spec(1, max_retries=2, max_failed=0), "a")
    params = {"dropout": 0.25}
    for attempt in range(3):
        claim = queue.claim(engine, "w", 4)
        assert claim is not None and len(claim.leases) == 1
        lease = claim.leases[0]
        assert lease.attempt == attempt
        assert lease.params == (params if attempt else None)
        assert queue.link_trial(engine, lease.id, 100 + attempt, attempt, params, "w")
        queue.finish(engine, lease.id, Outcome.FAILED, "boom")
    row = study_row(engine, sid)
    # Out of retries, past max_failed=0: the study fails and says why.
    assert row.status == "failed" and "boom" in row.reason
    assert queue.claim(engine, "w", 1) is None


def test_given_up_slot_comes_back_with_fresh_params(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = queue.enqueue(engine, spec(1, max_retries=0, max_failed=5), "a")
    claim = queue.claim(engine, "w", 1)
    assert claim is not None
    queue.link_trial(engine, claim.leases[0].id, 1, 0, {"dropout": 0.5}, "w")
    queue.finish(engine, claim.leases[0].id, Outcome.FAILED, "boom")
    again = queue.claim(engine, "w", 1)
    assert again is not None and again.leases[0].params is None
    assert study_row(engine, sid).n_given_up == 1


def test_released_slot_is_retried_without_counting_an_attempt(db_url: str) -> None:
    engine = create_engine(db_url)
    queue.enqueue(engine, spec(2), "a")
    claim = queue.claim(engine, "w", 2)
    assert claim is not None
    queue.link_trial(engine, claim.leases[0].id, 7, 0, {"dropout": 0.1}, "w")
    queue.finish(engine, claim.leases[0].id, Outcome.RELEASED)
    again = queue.claim(engine, "w2", 2)
    assert again is not None and len(again.leases) == 1
    assert again.leases[0].params == {"dropout": 0.1} and again.leases[0].attempt == 0


def test_cancel_stops_claims_and_is_scoped_to_the_owner(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = queue.enqueue(engine, spec(4), "alice")
    claim = queue.claim(engine, "w", 1)
    assert claim is not None
    with pytest.raises(NotFound):
        queue.cancel(engine, sid, "mallory")
    assert queue.cancel(engine, sid, "alice") == "cancelled"
    assert queue.claim(engine, "w", 4) is None
    with pytest.raises(Conflict):
        queue.cancel(engine, sid, "alice")
    queue.finish(engine, claim.leases[0].id, Outcome.DROPPED)
    row = study_row(engine, sid)
    assert row.status == "cancelled" and row.n_done == 0
    with pytest.raises(NotFound):
        queue.cancel(engine, 9999, "alice")


def test_heartbeat_renews_leases_and_reports_ended_studies(db_url: str) -> None:
    engine = create_engine(db_url)
    registry.register(engine, "w", "host", 1, "cpu")
    sid = queue.enqueue(engine, spec(2), "a")
    claim = queue.claim(engine, "w", 2)
    assert claim is not None
    time.sleep(0.05)
    assert len(queue.stale_leases(engine, 0.0)) == 2
    held = [lease.id for lease in claim.leases]
    beat = registry.heartbeat(engine, "w", sid, [0, 1], held)
    assert beat.live_leases == {lease.id for lease in claim.leases}
    assert beat.ended_studies == {}
    assert queue.stale_leases(engine, 5.0) == []
    queue.cancel(engine, sid, "a")
    assert registry.heartbeat(engine, "w", sid, [0, 1], held).ended_studies == {sid: "cancelled"}
    # A lease the worker no longer works on is not renewed: it goes stale and is retried.
    time.sleep(0.05)
    registry.heartbeat(engine, "w", sid, [0], held[:1])
    assert [s.id for s in queue.stale_leases(engine, 0.03)] == held[1:]
    workers = registry.list_workers(engine, 30.0, include_stopped=False)
    assert [(w.id, w.status, w.study_id) for w in workers] == [("w", "live", sid)]
    registry.stopped(engine, "w")
    assert registry.list_workers(engine, 30.0, include_stopped=False) == []


def test_leases_compare_against_the_database_clock(db_url: str) -> None:
    engine = create_engine(db_url)
    queue.enqueue(engine, spec(1), "a")
    claim = queue.claim(engine, "w", 1)
    assert claim is not None
    # Put the heartbeat 60 s in the database's past: stale for a 30 s grace, fresh for 90 s.
    age_leases(engine, 60)
    assert [s.id for s in queue.stale_leases(engine, 30)] == [claim.leases[0].id]
    assert queue.stale_leases(engine, 90) == []


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
    assert study_row(engine, sid).status == "succeeded"
    loaded = optuna.load_study(study_name=claim.optuna_study, storage=db_url)
    assert len(loaded.trials) == 1


def test_recovery_fails_a_trial_its_worker_never_linked(db_url: str) -> None:
    from worker.objective import new_trial

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
    from storage import recovery
    from worker.objective import new_trial

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
    real = queue.stale_leases

    def read_then_worker_beats(eng: Any, grace: float) -> Any:
        stale = real(eng, grace)
        registry.heartbeat(engine, "dead", sid, [], [claim.leases[0].id])  # alive after all
        return stale

    monkeypatch.setattr("storage.recovery.stale_leases", read_then_worker_beats)
    assert recover_stale(engine, storage, 30.0) == 0
    assert storage.get_trial(trial._trial_id).state == TrialState.RUNNING
    assert queue.live_lease_ids(engine, [claim.leases[0].id]) == {claim.leases[0].id}
    assert study_row(engine, sid).slots_claimed == 1


def test_recovery_leaves_an_unlinked_lease_that_heartbeat_meanwhile(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = queue.enqueue(engine, spec(1), "a")
    claim = queue.claim(engine, "slow", 1)
    assert claim is not None
    age_leases(engine, 120)
    stale = queue.stale_leases(engine, 30.0)
    assert [s.id for s in stale] == [claim.leases[0].id]
    registry.register(engine, "slow", "h", 1, "cpu")
    registry.heartbeat(engine, "slow", sid, [], [claim.leases[0].id])  # it is alive after all
    assert not queue.release_stale_unlinked(engine, claim.leases[0].id, 30.0)
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
    from storage.recovery import ORPHANED
    from worker.objective import new_trial

    engine, storage, sid, claim, study, running = started_trial(db_url, 2)
    gone, kept = claim.leases
    orphan = new_trial(study, None, {"lease": gone.id})
    assert queue.finish(engine, gone.id, Outcome.RELEASED)  # its lease ended elsewhere
    alive = new_trial(study, None, {"lease": kept.id})
    outsider = new_trial(study, None, {})  # not droptune's: no lease tag, left alone
    recover_stale(engine, storage, 30.0)
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
    assert queue.live_lease_ids(engine, [broken.id, claim.leases[0].id]) == {broken.id}


def test_claim_of_a_named_study_takes_no_other(db_url: str) -> None:
    engine = create_engine(db_url)
    full = queue.enqueue(engine, spec(1), "a")
    other = queue.enqueue(engine, spec(3), "a")
    assert queue.claim(engine, "w1", 1, full) is not None
    # Sized for `full`, which filled up meanwhile: nothing, rather than slots of `other`.
    assert queue.claim(engine, "w2", 1, full) is None
    got = queue.claim(engine, "w2", 2, other)
    assert got is not None and got.study_id == other and len(got.leases) == 2


def test_a_stored_spec_this_version_refuses_is_failed_not_handed_out(db_url: str) -> None:
    """A study stored before a submit check existed stays readable, and no worker takes it."""
    engine = create_engine(db_url)
    legacy = queue.enqueue(engine, spec(3), "a")
    good = queue.enqueue(engine, spec(2), "a")
    raw = {
        "dataset": {"builtin": "digits"},
        "model": {"kind": "cnn"},
        "search": {"n_trials": 3, "input_dropout_high": 0.3},
    }
    with transaction(engine) as conn:  # as an earlier version wrote it
        conn.execute(studies.update().where(studies.c.id == legacy).values(spec=raw))
    with pytest.raises(ValueError, match="input dropout"):
        StudySpec.model_validate(raw)

    nxt = queue.peek(engine)
    assert nxt is not None and nxt[0] == good
    row = study_row(engine, legacy)
    assert row.status == "failed"
    assert "search.input_dropout_high" in row.reason and "MLP" in row.reason
    out = Reader(engine, optuna_storage(db_url, writes=False)).study(legacy, "a")
    assert out.status == "failed" and out.spec.model.kind == "cnn"
