"""DELETE /studies/{id}, `Client.delete_study` and `droptune rm`: an ended study goes with its
Optuna study, retries, models and Idempotency-Keys; a queued or running one, or one whose
leases are still held, is refused (409); another owner's is not found (404)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from droptune.client.api import Client, ClientError
from droptune.core.errors import Conflict, NotFound
from droptune.storage.jobs import queue, refits
from droptune.storage.jobs.lifecycle import Why, delete_study, settle
from droptune.storage.optuna_bridge import optuna_storage, study_id_of, study_lock
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.sql.tables import idempotency as keys
from droptune.storage.sql.tables import leases, models, retries, studies
from droptune.storage.submit import idempotency, submits
from tests import procs
from tests.queueing import claimed, spec

SMALL = {
    "dataset": {"builtin": "digits"},
    "model": {"hidden": [32]},
    "training": {"epochs": 2},
    "cv": {"folds": 3},
    "search": {"n_trials": 2, "batch_trials": 2},
}
LONG = {**SMALL, "training": {"epochs": 1000}}


def rows(engine: sa.Engine, study_id: int) -> dict[str, int]:
    """How many rows of each droptune table still point at the study."""
    with transaction(engine, read_only=True) as conn:
        out = {
            t.name: conn.execute(
                sa.select(sa.func.count()).select_from(t).where(t.c.study_id == study_id)
            ).scalar_one()
            for t in (leases, retries, models, keys)
        }
        out["studies"] = conn.execute(
            sa.select(sa.func.count()).select_from(studies).where(studies.c.id == study_id)
        ).scalar_one()
    return out


def optuna_trials(engine: sa.Engine) -> int:
    with transaction(engine, read_only=True) as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM trials")).scalar_one())


def _ended_with_everything(db_url: str) -> tuple[sa.Engine, Any, int, str]:
    """A cancelled study of owner `a` with Optuna trials, a waiting retry, a stored model and
    an Idempotency-Key; its leases ended. (engine, optuna storage, id, optuna name)"""
    engine, storage, sid, claim, study = claimed(db_url, 3, worker="w")
    with transaction(engine) as conn:
        idempotency.remember(conn, "a", f"key-{sid}", "0" * 64, sid)
        conn.execute(
            models.insert().values(
                study_id=sid, role="best", dropout=0.1, params={"dropout": 0.1}, file=b"pt2"
            )
        )
    for lease in claim.leases:
        trial = study.ask()
        trial.suggest_float("dropout", 0.0, 0.8)
        queue.link_trial(engine, lease.id, trial._trial_id, trial.number, trial.params, "w")
    queue.cancel(engine, sid, "a")
    for lease in claim.leases:  # the worker sees the cancel and ends its trials
        trial_id = queue_trial(engine, lease.id)
        settle(engine, storage, lease.id, trial_id, Why.CANCELLED)
    with transaction(engine) as conn:  # a cancel drops them; one written as it landed stays
        conn.execute(retries.insert().values(study_id=sid, params={"dropout": 0.1}, attempt=1))
    return engine, storage, sid, claim.optuna_study


def queue_trial(engine: sa.Engine, lease_id: int) -> int:
    with transaction(engine, read_only=True) as conn:
        return int(
            conn.execute(sa.select(leases.c.trial_id).where(leases.c.id == lease_id)).scalar_one()
        )


def test_delete_removes_the_study_and_everything_of_it(db_url: str) -> None:
    engine, storage, sid, name = _ended_with_everything(db_url)
    other = submits.enqueue(engine, spec(2), "a")  # untouched
    assert rows(engine, sid) == {
        "droptune_leases": 0,
        "droptune_retries": 1,
        "droptune_models": 1,
        "droptune_idempotency": 1,
        "studies": 1,
    }
    assert optuna_trials(engine) == 3
    with pytest.raises(NotFound):
        delete_study(engine, storage, sid, "b")  # another owner's: as if it did not exist
    delete_study(engine, storage, sid, "a")
    assert set(rows(engine, sid).values()) == {0}
    assert study_id_of(storage, name) is None
    assert optuna_trials(engine) == 0
    assert queue.ended_status(engine, sid) == "deleted"  # what a worker still on it reads
    with pytest.raises(NotFound):
        delete_study(engine, storage, sid, "a")  # once
    assert rows(engine, other)["studies"] == 1


def test_an_optuna_delete_that_did_nothing_is_a_409_that_changes_nothing(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna's delete_study rolls back silently when a write to the study races it (issue 19:
    DELETE answered 204 and left the Optuna study, its trials, note and plots behind). The
    delete checks the study is gone; when it is not, 409 and nothing else deleted."""
    engine, storage, sid, name = _ended_with_everything(db_url)
    monkeypatch.setattr(type(storage), "delete_study", lambda _self, _id: None)
    with pytest.raises(Conflict) as info:
        delete_study(engine, storage, sid, "a")
    assert "could not be removed" in info.value.detail and "DELETE again" in info.value.detail
    assert rows(engine, sid)["studies"] == 1
    assert study_id_of(storage, name) is not None and optuna_trials(engine) == 3
    monkeypatch.undo()
    delete_study(engine, storage, sid, "a")  # sent again: all of it goes
    assert set(rows(engine, sid).values()) == {0}
    assert study_id_of(storage, name) is None and optuna_trials(engine) == 0


@pytest.mark.parametrize("backend", ["postgres"])  # SQLite serialises every writer
def test_a_delete_racing_dashboard_writes_never_leaves_the_optuna_study(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """Writers keep writing the study's dashboard attributes (as a worker's last publish does,
    under storage.optuna_bridge.study_lock, and one that takes no lock) while it is deleted:
    each delete either removes everything (204) or answers 409 and removes nothing."""
    url = str(request.getfixturevalue("pg_url"))
    deleted = refused = 0
    for _ in range(6):
        engine, storage, sid, name = _ended_with_everything(url)
        oid = study_id_of(storage, name)
        assert oid is not None
        stop = threading.Event()

        def write(
            locked: bool, oid: int = oid, storage: Any = storage, stop: threading.Event = stop
        ) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                lock = study_lock(storage.engine, oid) if locked else contextlib.nullcontext()
                # The study may be gone: that is the point.
                with contextlib.suppress(Exception), lock:
                    storage.set_study_user_attr(oid, f"k{i % 5}", i)

        writers = [threading.Thread(target=write, args=(lk,)) for lk in (True, True, False)]
        for w in writers:
            w.start()
        try:
            delete_study(engine, storage, sid, "a")
        except Conflict:
            refused += 1
            assert rows(engine, sid)["studies"] == 1 and study_id_of(storage, name) is not None
        else:
            deleted += 1
            assert rows(engine, sid)["studies"] == 0
            assert study_id_of(storage, name) is None, "DELETE left the Optuna study behind"
        finally:
            stop.set()
            for w in writers:
                w.join()
        engine.dispose()
    assert deleted >= 1, (deleted, refused)


@pytest.mark.parametrize("backend", ["postgres"])
def test_concurrent_deletes_do_not_starve_the_pools(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """More deletes at once than a pool has connections (review: each held its lock on a
    connection of Optuna's pool and waited for a second one from it, 30 s and a 500)."""
    url = str(request.getfixturevalue("pg_url"))
    made = [_ended_with_everything(url) for _ in range(10)]
    engine, storage = create_engine(url), optuna_storage(url)
    errors: list[BaseException] = []

    def delete(sid: int) -> None:
        try:
            delete_study(engine, storage, sid, "a")
        except BaseException as exc:  # collected: the assertion below names them
            errors.append(exc)

    threads = [threading.Thread(target=delete, args=(sid,)) for _, _, sid, _ in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for _, _, sid, name in made:
        assert rows(engine, sid)["studies"] == 0 and study_id_of(storage, name) is None
    for e, *_ in made:
        e.dispose()
    engine.dispose()


def test_an_admin_deletes_any_owners_study(db_url: str) -> None:
    engine, storage, sid, name = _ended_with_everything(db_url)
    delete_study(engine, storage, sid, None)
    assert rows(engine, sid)["studies"] == 0 and study_id_of(storage, name) is None


def test_queued_running_or_still_leased_studies_are_refused(db_url: str) -> None:
    engine, storage, sid, claim, _study = claimed(db_url, 2, worker="w")
    queued = submits.enqueue(engine, spec(2), "a")
    for study_id, status in ((queued, "queued"), (sid, "running")):
        with pytest.raises(Conflict, match=f"is {status}: cancel it first"):
            delete_study(engine, storage, study_id, "a")
    queue.cancel(engine, sid, "a")
    with pytest.raises(Conflict, match="2 of its trials are still stopping"):
        delete_study(engine, storage, sid, "a")
    assert rows(engine, sid)["studies"] == 1 and study_id_of(storage, claim.optuna_study)
    queue.finish(engine, claim.leases[0].id, queue.Outcome.DROPPED)
    with pytest.raises(Conflict, match="1 of its trials"):
        delete_study(engine, storage, sid, "a")
    queue.finish(engine, claim.leases[1].id, queue.Outcome.DROPPED)
    delete_study(engine, storage, sid, "a")
    assert rows(engine, sid)["studies"] == 0


def test_a_worker_still_on_a_deleted_study_learns_it_is_gone(db_url: str) -> None:
    """A worker frozen past the lease grace had its lease taken over by recovery and ended;
    the study was then deleted. What the worker reads when it wakes says so without an error:
    the study has ended (`deleted`: its batch stops at the next epoch), its lease is lost, and
    ending the lease or a refit of the study finds nothing to end."""
    engine, storage, sid, claim, study = claimed(db_url, 1, worker="w")
    trial = study.ask()
    lease = claim.leases[0].id
    queue.link_trial(engine, lease, trial._trial_id, trial.number, {}, "w")
    queue.cancel(engine, sid, "a")
    queue.finish(engine, lease, queue.Outcome.DROPPED)  # as recovery ends it
    delete_study(engine, storage, sid, "a")
    assert queue.ended_status(engine, sid) == "deleted"
    with transaction(engine) as conn:
        beat = queue.heartbeat_leases(conn, "w", [lease])
    assert beat.live_leases == frozenset() and beat.ended_studies == {}
    assert queue.link_trial(engine, lease, trial._trial_id, 0, {}, "w") is False
    assert queue.finish(engine, lease, queue.Outcome.DROPPED) is False
    refit = refits.RefitClaim(lease, sid, claim.optuna_study, claim.spec, 0)
    assert refits.complete(engine, refit, "w", None, []) is False
    assert refits.give_back(engine, refit, "w", failed=True, reason="x") is False


@pytest.mark.parametrize("backend", ["postgres"])  # SQLite's delete: the tests above
def test_delete_a_study_a_real_worker_is_training(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Through the API and the CLI, with a worker training the study: 409 while it runs, 409
    until the worker has stopped its trials after the cancel, then 204; the worker goes on to
    the next study and stops cleanly (procs.service checks its exit status)."""
    url = str(request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url"))
    engine = create_engine(url)
    with procs.service(url, tmp_path) as (base, work), Client(base) as c:
        env = {**os.environ, "DROPTUNE_URL": base}
        study = c.submit(LONG)
        procs.wait_until(lambda: c.get(study.id).progress.running == 2, 90, "two trials")
        r = procs.cli("rm", str(study.id), env=env)
        assert r.returncode == 1
        assert r.stderr.strip() == (
            f"error: 409: study {study.id} is running: cancel it first (`droptune cancel "
            f"{study.id}`, POST /studies/{study.id}/cancel), then delete it"
        )
        c.cancel(study.id)
        refused = 0

        def deleted() -> bool:
            nonlocal refused
            try:
                c.delete_study(study.id)
            except ClientError as exc:
                assert exc.status == 409, exc
                assert "still stopping" in exc.detail or "DELETE again" in exc.detail, exc
                refused += 1
                return False
            return True

        procs.wait_until(deleted, 30, "the delete", every=0.05)
        assert c.last_status == 204
        with pytest.raises(ClientError) as gone:
            c.get(study.id)
        assert gone.value.status == 404
        assert set(rows(engine, study.id).values()) == {0}
        assert study_id_of(optuna_storage(url), study.optuna_study or "") is None
        assert optuna_trials(engine) == 0
        # The worker is alive and takes the next study to its end.
        assert work.poll() is None
        nxt = c.submit(SMALL)
        assert c.best(nxt.id, wait=120).status == "succeeded"
        r = procs.cli("rm", str(nxt.id), env=env)
        assert (r.returncode, r.stdout.strip()) == (0, f"study {nxt.id} deleted")
        r = procs.cli("rm", str(nxt.id), env=env)
        assert r.returncode == 1 and r.stderr.strip() == f"error: 404: study {nxt.id} not found"
        log = (tmp_path / "droptune.worker.log").read_text()
        assert "failed" not in log and "broke off" not in log, log[-3000:]
    engine.dispose()


def test_a_dead_workers_leases_hold_the_delete_until_recovered(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A worker killed mid-batch leaves its leases: the API refuses the delete (409) until its
    own recovery has ended them (DROPTUNE_LEASE_GRACE_SECONDS=4 here), then deletes."""
    engine = create_engine(sqlite_url)
    port = procs.free_port()
    api = procs.serve(sqlite_url, port, tmp_path / "serve.log")
    work = procs.worker(sqlite_url, tmp_path / "worker.log")
    try:
        with Client(f"http://127.0.0.1:{port}") as c:
            study = c.submit(LONG)
            procs.wait_until(lambda: c.get(study.id).progress.running == 2, 90, "two trials")
            work.send_signal(signal.SIGKILL)
            work.wait()
            c.cancel(study.id)
            with pytest.raises(ClientError) as held:
                c.delete_study(study.id)
            assert held.value.status == 409
            assert "DROPTUNE_LEASE_GRACE_SECONDS" in held.value.detail
            assert rows(engine, study.id)["droptune_leases"] == 2

            def deleted() -> bool:
                try:
                    c.delete_study(study.id)
                except ClientError as exc:
                    assert exc.status == 409, exc
                    return False
                return True

            procs.wait_until(deleted, 30, "recovery, then the delete")
            assert set(rows(engine, study.id).values()) == {0}
            assert optuna_trials(engine) == 0
    finally:
        procs.stop(work)
        procs.stop(api)
        engine.dispose()
