"""The worker loop's own robustness, in-process on a real SQLite file: a signal during recovery,
shutdown with a member failed elsewhere, a heartbeat that meets an unexpected error, a batch run
without a worker, and a bug in claiming that must end the worker instead of looping."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
import sqlalchemy as sa
import torch

import droptune.worker.run.batch
import droptune.worker.run.loop
from droptune.core.spec.study import StudySpec
from droptune.storage.jobs import queue
from droptune.storage.optuna_bridge import optuna_storage
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.submit import submits
from droptune.worker.run.loop import Worker
from droptune.worker.run.settings import WorkerSettings
from tests.integration.test_worker import TINY, run_study
from tests.queueing import study_row


def test_a_signal_during_recovery_claims_nothing(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Worker._maybe_recover

    def signalled(self: Worker) -> None:
        real(self)
        self.request_stop()  # SIGTERM arrives while recovery runs

    monkeypatch.setattr(Worker, "_maybe_recover", signalled)
    sid = submits.enqueue(create_engine(sqlite_url), StudySpec.model_validate(TINY), "local")
    w = Worker(WorkerSettings(database_url=sqlite_url, device="cpu", threads=1))
    assert w.run() == 0  # exits although the queue is not empty
    storage = optuna_storage(sqlite_url)
    assert storage.get_all_studies() == []  # not even an Optuna study was created
    row = study_row(sqlite_url, sid)
    assert (row.status, row.slots_claimed) == ("queued", 0)


def test_shutdown_ends_every_member_even_when_one_was_failed_elsewhere(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member pruned, then failed by recovery, then SIGTERM: telling it PRUNED fails, and the
    others must still be released at once (no RUNNING trial, no lease left behind)."""
    import droptune.worker.run.batch
    from droptune.storage.jobs.lifecycle import fail_trial
    from droptune.storage.sql.tables import leases

    real = droptune.worker.run.batch.BatchRunner._on_epoch

    def meddle(self: Any, claim: Any, members: Any, epoch: int, *rest: Any) -> Any:
        if epoch == 1:
            members[0].pruned = True
            return [0]
        if epoch == 2 and not self.ctx.stop.is_set():
            fail_trial(self.ctx.optuna, members[0].trial._trial_id, "lease lost (simulated)")
            self.ctx.stop.set()
        return real(self, claim, members, epoch, *rest)

    monkeypatch.setattr(droptune.worker.run.batch.BatchRunner, "_on_epoch", meddle)
    sid, trials = run_study(
        sqlite_url,
        {"training": {"epochs": 3}, "search": {"n_trials": 3, "batch_trials": 3}},
    )
    assert sorted(t.state.name for t in trials) == ["FAIL", "FAIL", "FAIL"]
    shutdown = "worker shutdown: released for retry"
    assert [t.user_attrs["reason"] for t in trials[1:]] == [shutdown] * 2
    with transaction(create_engine(sqlite_url)) as conn:
        assert conn.execute(sa.select(leases)).all() == []
    row = study_row(sqlite_url, sid)
    # Two slots released (same params, no attempt counted), one failed (retry queued).
    assert (row.status, row.slots_claimed, row.n_done) == ("running", 0, 0)


def test_the_heartbeat_survives_an_unexpected_error(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heartbeat thread that died would let a live worker's leases go stale and be retried."""
    import time

    from droptune.storage.jobs import registry
    from droptune.worker.run.heartbeat import LeaseHeartbeat

    engine = create_engine(sqlite_url)
    registry.register(engine, "w", "h", 1, "cpu")
    real, calls = registry.heartbeat, []

    def flaky(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("a bug (simulated)")
        return real(*args)

    monkeypatch.setattr(registry, "heartbeat", flaky)
    with LeaseHeartbeat(engine, "w", 0.05, lambda: (None, [])) as hb:
        deadline = time.monotonic() + 10
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hb.alive and len(calls) >= 3


def test_a_batch_runs_without_a_worker(sqlite_url: str) -> None:
    """BatchRunner needs only its context: a claimed batch trains, tells and ends its leases."""
    import threading

    from droptune.storage.optuna_bridge import ensure_study
    from droptune.worker.engine.data import load_dataset, prepare_folds
    from droptune.worker.run.batch import BatchRunner
    from droptune.worker.run.context import BatchContext
    from droptune.worker.run.heartbeat import LeaseHeartbeat

    engine = create_engine(sqlite_url)
    storage = optuna_storage(sqlite_url)
    spec = StudySpec.model_validate({**TINY, "search": {"n_trials": 3}})
    sid = submits.enqueue(engine, spec, "local")
    claim = queue.claim(engine, "solo", 3)
    assert claim is not None
    ensure_study(storage, claim.optuna_study, spec, sid)
    ctx = BatchContext(engine, storage, torch.device("cpu"), "solo", threading.Event())
    hb = LeaseHeartbeat(engine, "solo", 60.0, lambda: (None, []))  # beats only when asked
    BatchRunner(ctx, hb).run(claim, lambda: prepare_folds(load_dataset("digits"), 3, 0))
    row = study_row(sqlite_url, sid)
    # digits holds out 20% of its rows by default: the search is over, the refit is next
    assert (row.status, row.n_done, row.refit_state) == ("running", 3, "ready")
    trials = optuna.load_study(study_name=claim.optuna_study, storage=sqlite_url).trials
    assert [t.user_attrs["worker"] for t in trials] == ["solo"] * 3


def test_a_bug_in_claiming_ends_the_worker_instead_of_looping(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage is waited out; an error that is not one, again and again, is a bug."""

    calls: list[int] = []

    def broken(*_a: object) -> None:
        calls.append(1)
        raise sa.exc.NoResultFound("simulated bug")

    monkeypatch.setattr(droptune.worker.run.loop, "MAX_BUGS", 3)
    monkeypatch.setattr("droptune.worker.run.loop.time.sleep", lambda _s: None)
    monkeypatch.setattr(queue, "peek", broken)
    w = Worker(WorkerSettings(database_url=sqlite_url, device="cpu", threads=1))
    with pytest.raises(sa.exc.NoResultFound):
        w.run()
    assert len(calls) == 3
