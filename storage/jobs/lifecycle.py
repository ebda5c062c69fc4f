"""How a trial and its lease end: `settle(lease, trial, why)`, and one table of outcomes.

Every way a trial stops goes through here — the worker telling a score, a pruned trial, a
diverged one, an error in its batch, a shutdown, a cancel, a lease another process took over,
and recovery of a worker that died. `settle` tells or fails the Optuna trial if it is still
running, reads the state it ended in (another process may have finished it first: a trial
finishes once), maps (that state, why) to what happens to the slot through `OUTCOMES`, and ends
the lease, retrying storage errors.

| why | the trial is told | ended COMPLETE or PRUNED | ended FAIL | no trial linked |
|---|---|---|---|---|
| TRAINED | its score | DONE | FAILED | RELEASED |
| PRUNED | PRUNED | DONE | FAILED | RELEASED |
| DIVERGED | FAIL | DONE | FAILED | RELEASED |
| ERROR | FAIL | DONE | FAILED | RELEASED |
| LOST | FAIL | DONE | FAILED | RELEASED |
| LEASE_LOST | FAIL | DONE | FAILED | RELEASED |
| SHUTDOWN | FAIL | DONE | RELEASED | RELEASED |
| CANCELLED | FAIL | DONE | DROPPED | DROPPED |
| STUDY_ENDED | FAIL | DONE | DROPPED | DROPPED |

DONE counts a finished trial; FAILED gives the slot back with its parameters and an attempt
(retried up to `max_retries`, then counted against `max_failed`: `core.retry.RetryPolicy`, which
queue.finish applies); RELEASED gives it back at once,
no attempt counted; DROPPED gives nothing back (the study has ended).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy.engine import Connection, Engine
from tenacity import (
    RetryError,
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from droptune.core.errors import Conflict, NotFound, StorageError
from droptune.core.states import ACTIVE, Outcome
from droptune.storage.jobs import queue
from droptune.storage.optuna_bridge import study_id_of, study_lock
from droptune.storage.sql.db import is_outage, transaction
from droptune.storage.sql.tables import leases, models, retries, studies
from droptune.storage.submit.idempotency import forget_study

log = logging.getLogger("droptune.lifecycle")


class Why(enum.Enum):
    """Why a trial stopped. The value is the reason written on a trial that is failed."""

    TRAINED = "trained"
    PRUNED = "pruned"
    DIVERGED = "non-finite score (training diverged)"
    ERROR = "error"  # its batch raised: the reason carries the error
    LOST = "lease lost: recovered by another process"  # seen by the worker that had it
    LEASE_LOST = "lease lost: its worker stopped heartbeating"  # seen by recovery
    SHUTDOWN = "worker shutdown: released for retry"
    CANCELLED = "cancelled"
    STUDY_ENDED = "study ended"  # the reason says how: "study failed"


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
NO_TRIAL = None  # the lease never linked an Optuna trial

_ON_FAIL = {
    Why.TRAINED: Outcome.FAILED,  # told, yet FAIL: failed elsewhere first
    Why.PRUNED: Outcome.FAILED,
    Why.DIVERGED: Outcome.FAILED,
    Why.ERROR: Outcome.FAILED,
    Why.LOST: Outcome.FAILED,
    Why.LEASE_LOST: Outcome.FAILED,
    Why.SHUTDOWN: Outcome.RELEASED,
    Why.CANCELLED: Outcome.DROPPED,
    Why.STUDY_ENDED: Outcome.DROPPED,
}
_ON_NO_TRIAL = {
    why: (Outcome.DROPPED if why in (Why.CANCELLED, Why.STUDY_ENDED) else Outcome.RELEASED)
    for why in Why
}
# (the state the trial ended in, or None when no trial was linked; why) -> the slot's outcome
OUTCOMES: Mapping[tuple[TrialState | None, Why], Outcome] = {
    **{(state, why): Outcome.DONE for state in FINISHED for why in Why},
    **{(TrialState.FAIL, why): outcome for why, outcome in _ON_FAIL.items()},
    **{(NO_TRIAL, why): outcome for why, outcome in _ON_NO_TRIAL.items()},
}

# Reasons of trials stopped from outside rather than failing: retried or moot, shown apart.
INTERRUPTIONS = (Why.SHUTDOWN.value, Why.CANCELLED.value)
ORPHANED = "orphaned: its lease was gone (its worker died before ending it)"


def is_interruption(reason: object) -> bool:
    """Whether a FAIL trial was stopped from outside (a shutdown, a cancel, its study's end)."""
    return reason in INTERRUPTIONS or (isinstance(reason, str) and reason.startswith("study "))


def fail_trial(storage: RDBStorage, trial_id: int, reason: str) -> TrialState:
    """Fail a running trial with a reason; return its final state (which may be COMPLETE)."""
    try:
        storage.set_trial_user_attr(trial_id, "reason", reason)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        pass
    except RuntimeError as exc:  # Optuna refuses attrs on a finished trial this way too
        if "finished" not in str(exc):
            raise
    return storage.get_trial(trial_id).state


def end_trial(
    storage: RDBStorage,
    trial_id: int,
    why: Why,
    *,
    trial: optuna.Trial | None = None,
    value: float | None = None,
    attrs: Mapping[str, Any] | None = None,
    reason: str | None = None,
) -> TrialState:
    """Tell (TRAINED, PRUNED) or fail (anything else) a trial that is still running, and return
    the state it ended in, whoever ended it."""
    if why in (Why.TRAINED, Why.PRUNED):
        try:
            if trial is not None:  # through its study, as Optuna's own loop tells a trial
                for k, v in (attrs or {}).items():
                    trial.set_user_attr(k, v)
                if why is Why.TRAINED:
                    trial.study.tell(trial, value)
                else:
                    trial.study.tell(trial, state=TrialState.PRUNED)
            else:
                for k, v in (attrs or {}).items():
                    storage.set_trial_user_attr(trial_id, k, v)
                values = None if value is None else [value]
                state = TrialState.COMPLETE if why is Why.TRAINED else TrialState.PRUNED
                storage.set_trial_state_values(trial_id, state, values)
        except (UpdateFinishedTrialError, RuntimeError, ValueError) as exc:
            # Finished elsewhere first (recovery failed it): its state decides.
            log.warning("trial id %s could not be told: %s", trial_id, exc)
        state = storage.get_trial(trial_id).state
        if state != TrialState.RUNNING:
            return state
        # Not told and still running: failed, never left RUNNING (it would count for ever).
    return fail_trial(storage, trial_id, reason or why.value)


def settle(
    engine: Engine,
    storage: RDBStorage,
    lease_id: int,
    trial_id: int | None,
    why: Why,
    *,
    trial: optuna.Trial | None = None,
    value: float | None = None,
    attrs: Mapping[str, Any] | None = None,
    reason: str | None = None,
    end: Callable[[Outcome, str | None], bool] | None = None,
    attempts: int = 5,
) -> Outcome | None:
    """End a trial (if it is still running) and its lease; return the slot's outcome, or None
    when the database could not be reached and the lease is left to go stale (recovery then
    reads the trial's state and ends it). `end` ends the lease (default `queue.finish`)."""
    reason = reason or why.value
    if trial_id is None:
        state: TrialState | None = NO_TRIAL
    else:
        try:
            state = end_trial(
                storage, trial_id, why, trial=trial, value=value, attrs=attrs, reason=reason
            )
        except Exception as exc:
            if not is_outage(exc):
                raise  # a bug: the caller's own error handling decides
            log.warning("trial id %s: could not end it (%s); left to recovery", trial_id, exc)
            return None
    outcome = OUTCOMES[(state if state in (*FINISHED, NO_TRIAL) else TrialState.FAIL, why)]
    if why in (Why.TRAINED, Why.PRUNED) and outcome is Outcome.FAILED:
        reason = "failed elsewhere before it was told"

    def _end() -> bool:
        if end is not None:
            return end(outcome, reason)
        return queue.finish(engine, lease_id, outcome, reason)

    retrying = Retrying(
        retry=retry_if_exception_type(StorageError),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.5, max=5),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=False,
    )
    try:
        retrying(_end)
    except RetryError as exc:
        log.warning(
            "lease %s: could not end it after %d attempts (%s); left to recovery",
            lease_id,
            attempts,
            exc.last_attempt.exception(),
        )
        return None
    return outcome


DELETE_ATTEMPTS = 3  # tries at removing the Optuna study before the DELETE answers 409


def delete_study(engine: Engine, storage: RDBStorage, study_id: int, owner: str | None) -> None:
    """Remove an ended study: its Optuna study (trials and all), then in one transaction its
    row, waiting retries, stored models and Idempotency-Keys. `owner` None: an admin's.

    Refused (409) while the study is queued or running (cancel it first), and while any lease
    of it is still held: a worker stops a cancelled study's trials at its next epoch, and a dead
    worker's leases are recovered after the lease grace, so the refusal passes by itself.
    Deleting only once no lease exists means no worker still trains on the study or writes to
    its Optuna study (no new lease is ever claimed for an ended study).

    Optuna's study goes first, in its own transaction (Optuna's storage runs its own): should
    the second step fail, the row is still there and the DELETE can be sent again; the other
    order could leave an Optuna study no row points at.
    """
    with transaction(engine) as conn:
        name = _deletable(conn, study_id, owner)
    optuna_id = None if name is None else study_id_of(storage, name)
    if name is not None and optuna_id is not None:
        _delete_optuna_study(engine, storage, name, optuna_id, study_id)
    with transaction(engine) as conn:
        _deletable(conn, study_id, owner)  # again, locked: ended states never change back
        for table in (retries, models):
            conn.execute(table.delete().where(table.c.study_id == study_id))
        forget_study(conn, study_id)
        conn.execute(studies.delete().where(studies.c.id == study_id))
        queue.notify(conn, study_id, work=False)  # a watcher of it sees it gone
    log.info("study %s deleted (Optuna study %r)", study_id, name)


def _delete_optuna_study(
    engine: Engine, storage: RDBStorage, name: str, optuna_id: int, study_id: int
) -> None:
    """Delete the Optuna study and check that it is gone: Optuna's delete_study rolls back
    silently when a concurrent write to the study breaks its foreign keys, and the DELETE must
    never answer 204 with the Optuna study left behind (issue 19). Taken in turns with the
    dashboard publishes (study_lock, on droptune's own pool: see there); tried again a few
    times, then 409 with nothing deleted. Checked by name, not id: SQLite may give a new study
    the id of the one just deleted."""
    for attempt in range(DELETE_ATTEMPTS):
        # KeyError: gone already; StorageInternalError: a write raced it, as above, and said so.
        with study_lock(engine, optuna_id), contextlib.suppress(KeyError, StorageInternalError):
            storage.delete_study(optuna_id)
        if study_id_of(storage, name) != optuna_id:
            return
        log.warning("Optuna study %s survived its delete (a write raced it); again", optuna_id)
        time.sleep(0.1 * (attempt + 1))
    raise Conflict(
        f"study {study_id}: its Optuna study could not be removed (writes to it raced the "
        "delete); nothing was deleted: send the DELETE again"
    )


def _deletable(conn: Connection, study_id: int, owner: str | None) -> str | None:
    """The Optuna study name of a study that may be deleted now (locked), else 404 or 409."""
    owned = [] if owner is None else [studies.c.owner == owner]
    row = conn.execute(
        sa.select(studies.c.status, studies.c.optuna_study)
        .where(studies.c.id == study_id, *owned)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFound(f"study {study_id} not found")
    if row.status in ACTIVE:
        raise Conflict(
            f"study {study_id} is {row.status}: cancel it first (`droptune cancel {study_id}`, "
            f"POST /studies/{study_id}/cancel), then delete it"
        )
    held = conn.execute(
        sa.select(sa.func.count()).where(leases.c.study_id == study_id)
    ).scalar_one()
    if held:
        raise Conflict(
            f"study {study_id} has ended, but {held} of its trials are still stopping on their "
            "workers; try again in a few seconds (a dead worker's are recovered after "
            "DROPTUNE_LEASE_GRACE_SECONDS)"
        )
    return None if row.optuna_study is None else str(row.optuna_study)
