"""The queue's contract, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import time

import pytest

from droptune.core.errors import Conflict, NotFound
from droptune.core.spec.study import StudySpec
from droptune.storage.jobs import early_stop, queue, registry, stale
from droptune.storage.jobs.queue import Outcome
from droptune.storage.optuna_bridge import optuna_storage
from droptune.storage.readmodel.reads import Reader
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.sql.tables import studies
from droptune.storage.submit import submits
from tests.queueing import refit_done, spec, study_row


def test_claim_reserves_slots_and_never_more_than_n_trials(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = submits.enqueue(engine, spec(5), "alice")
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
    old = submits.enqueue(engine, spec(1), "a")
    urgent = submits.enqueue(
        engine,
        spec(
            1,
        ).model_copy(update={"priority": 5}),
        "a",
    )
    young = submits.enqueue(engine, spec(1), "a")
    order = [queue.claim(engine, "w", 1) for _ in range(3)]
    assert [c.study_id for c in order if c] == [urgent, old, young]


def test_done_trials_complete_the_study(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = submits.enqueue(engine, spec(3), "a")
    claim = queue.claim(engine, "w", 3)
    assert claim is not None
    for lease in claim.leases:
        assert queue.finish(engine, lease.id, Outcome.DONE)
    refit_done(engine, sid)  # the search is over: the refit, then the study succeeds
    row = study_row(engine, sid)
    assert (row.status, row.n_done) == ("succeeded", 3)
    assert row.ended_at is not None
    # A lease can end once only, and its id is never handed out again (a lost worker that
    # comes back must not end somebody else's lease).
    assert not queue.finish(engine, claim.leases[0].id, Outcome.DONE)
    submits.enqueue(engine, spec(1), "a")
    later = queue.claim(engine, "w", 1)
    assert later is not None and later.leases[0].id > max(x.id for x in claim.leases)


def test_failed_trial_retries_its_params_then_gives_up(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = submits.enqueue(engine, spec(1, max_retries=2, max_failed=0), "a")
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
    sid = submits.enqueue(engine, spec(1, max_retries=0, max_failed=5), "a")
    claim = queue.claim(engine, "w", 1)
    assert claim is not None
    queue.link_trial(engine, claim.leases[0].id, 1, 0, {"dropout": 0.5}, "w")
    queue.finish(engine, claim.leases[0].id, Outcome.FAILED, "boom")
    again = queue.claim(engine, "w", 1)
    assert again is not None and again.leases[0].params is None
    assert study_row(engine, sid).n_given_up == 1


def test_released_slot_is_retried_without_counting_an_attempt(db_url: str) -> None:
    engine = create_engine(db_url)
    submits.enqueue(engine, spec(2), "a")
    claim = queue.claim(engine, "w", 2)
    assert claim is not None
    queue.link_trial(engine, claim.leases[0].id, 7, 0, {"dropout": 0.1}, "w")
    queue.finish(engine, claim.leases[0].id, Outcome.RELEASED)
    again = queue.claim(engine, "w2", 2)
    assert again is not None and len(again.leases) == 1
    assert again.leases[0].params == {"dropout": 0.1} and again.leases[0].attempt == 0


def test_cancel_stops_claims_and_is_scoped_to_the_owner(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = submits.enqueue(engine, spec(4), "alice")
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
    sid = submits.enqueue(engine, spec(2), "a")
    claim = queue.claim(engine, "w", 2)
    assert claim is not None
    time.sleep(0.05)
    assert len(stale.stale_leases(engine, 0.0)) == 2
    held = [lease.id for lease in claim.leases]
    beat = registry.heartbeat(engine, "w", sid, [0, 1], held)
    assert beat.live_leases == {lease.id for lease in claim.leases}
    assert beat.ended_studies == {}
    assert stale.stale_leases(engine, 5.0) == []
    queue.cancel(engine, sid, "a")
    assert registry.heartbeat(engine, "w", sid, [0, 1], held).ended_studies == {sid: "cancelled"}
    # A lease the worker no longer works on is not renewed: it goes stale and is retried.
    time.sleep(0.6)  # wide margins: a loaded machine must not make the renewed one stale
    registry.heartbeat(engine, "w", sid, [0], held[:1])
    assert [s.id for s in stale.stale_leases(engine, 0.3)] == held[1:]
    workers = registry.list_workers(engine, 30.0, include_stopped=False)
    assert [(w.id, w.status, w.study_id) for w in workers] == [("w", "live", sid)]
    registry.stopped(engine, "w")
    assert registry.list_workers(engine, 30.0, include_stopped=False) == []


def test_claim_of_a_named_study_takes_no_other(db_url: str) -> None:
    engine = create_engine(db_url)
    full = submits.enqueue(engine, spec(1), "a")
    other = submits.enqueue(engine, spec(3), "a")
    assert queue.claim(engine, "w1", 1, full) is not None
    # Sized for `full`, which filled up meanwhile: nothing, rather than slots of `other`.
    assert queue.claim(engine, "w2", 1, full) is None
    got = queue.claim(engine, "w2", 2, other)
    assert got is not None and got.study_id == other and len(got.leases) == 2


def test_a_stored_spec_this_version_refuses_is_failed_not_handed_out(db_url: str) -> None:
    """A study stored before a submit check existed stays readable, and no worker takes it."""
    engine = create_engine(db_url)
    legacy = submits.enqueue(engine, spec(3), "a")
    good = submits.enqueue(engine, spec(2), "a")
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


def test_a_settled_search_stops_handing_out_slots_and_ends_when_its_trials_do(
    db_url: str,
) -> None:
    """early_stop.stop_search (search.stop_when_settled): n_trials becomes the claimed count, the
    reason is kept and shown as /best's `stopped`; the study ends with its last claimed trial, at
    once when they have all finished; not while retries wait, nor once ended."""
    engine = create_engine(db_url)
    why = "search settled after 4 of at most 10 trials: test"
    sid = submits.enqueue(engine, spec(10), "a")
    claim = queue.claim(engine, "w", 4)
    assert claim is not None and len(claim.leases) == 4
    for lease in claim.leases[:3]:
        assert queue.finish(engine, lease.id, Outcome.DONE)
    assert early_stop.stop_search(engine, sid, why)
    row = study_row(engine, sid)
    assert (row.status, row.n_trials, row.reason) == ("running", 4, why)
    assert queue.claim(engine, "w", 4) is None  # no slot beyond those claimed
    assert queue.finish(engine, claim.leases[3].id, Outcome.DONE)
    refit_done(engine, sid)
    assert study_row(engine, sid).status == "succeeded"
    assert not early_stop.stop_search(engine, sid, why)  # ended
    best = Reader(engine, optuna_storage(db_url)).best(sid, None)
    assert best.stopped == why
    # Every claimed trial already finished: the search ends at once (its refit is next).
    other = submits.enqueue(engine, spec(10), "a")
    first = queue.claim(engine, "w", 2)
    assert first is not None
    for lease in first.leases:
        queue.finish(engine, lease.id, Outcome.DONE)
    assert early_stop.stop_search(engine, other, why)
    refit_done(engine, other)
    assert (study_row(engine, other).status, study_row(engine, other).n_done) == ("succeeded", 2)
    # A retry waiting for a slot is owed its run: no early stop then.
    owed = submits.enqueue(engine, spec(10, max_retries=1), "a")
    c = queue.claim(engine, "w", 2)
    assert c is not None
    assert queue.link_trial(engine, c.leases[0].id, 900, 0, {"dropout": 0.1}, "w")
    queue.finish(engine, c.leases[0].id, Outcome.FAILED, "boom")
    assert not early_stop.stop_search(engine, owed, why)
    assert study_row(engine, owed).n_trials == 10
    engine.dispose()
