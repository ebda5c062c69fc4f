"""Recover stale work: fail the trials of lost leases in Optuna and give their slots back.

Run by every worker before it claims and by the API in the background, so a study moves on as
long as anything is running. Safe to run from many processes at once: the Optuna state decides
the outcome (a trial is finished once, atomically), and the lease row is deleted exactly once.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy.engine import Engine

from droptune.core.errors import StorageError
from droptune.core.states import Outcome
from droptune.storage.jobs.lifecycle import ORPHANED, Why, fail_trial, settle
from droptune.storage.jobs.queue import finish
from droptune.storage.jobs.stale import (
    StaleLease,
    keep_params,
    live_lease_ids,
    release_unlinked,
    running_leased_trials,
    stale_leases,
    take_stale,
)
from droptune.storage.optuna_bridge import study_id_of

log = logging.getLogger("droptune.recovery")


def recover_stale(engine: Engine, storage: RDBStorage, grace_seconds: float) -> int:
    """Handle every lease older than the grace period, then fail orphaned trials; return how
    many leases were recovered. One lease that cannot be handled never stops the others."""
    n = 0
    for lease in stale_leases(engine, grace_seconds):
        try:
            n += _recover(engine, storage, lease, grace_seconds)
        except StorageError:
            raise  # the database is away: the next round tries again
        except Exception:
            log.exception("could not recover lease %s of study %s", lease.id, lease.study_id)
    fail_orphans(engine, storage)
    return n


def _recover(engine: Engine, storage: RDBStorage, lease: StaleLease, grace_seconds: float) -> int:
    # Take the lease over first, in one conditional statement: a worker that heartbeat or linked
    # since the stale read keeps its lease and its trial untouched.
    taken, trial_id = take_stale(engine, lease.id, grace_seconds)
    if not taken:
        return 0
    lease = replace(lease, trial_id=trial_id)
    if lease.trial_id is None:
        # Lost before it linked a trial: fail the trial if the worker had created one (it
        # carries its lease id), then give the slot back with that trial's parameters, so they
        # are retried like any lost trial's. The worker can no longer link it (refused, it
        # fails its trial), so no slot is counted twice.
        params = _fail_unlinked(storage, lease)
        if params:
            keep_params(engine, lease.id, params)
    ended = False

    def end(outcome: Outcome, reason: str | None) -> bool:
        nonlocal ended
        if lease.trial_id is None:
            ended = release_unlinked(engine, lease.id, reason)
        else:
            ended = finish(engine, lease.id, outcome, reason)
        return ended

    # Optuna first, then the lease (settle's order): a crash in between leaves a stale lease
    # whose trial's final state the next round reads. One attempt: the next round retries.
    outcome = settle(engine, storage, lease.id, lease.trial_id, Why.LEASE_LOST, end=end, attempts=1)
    if outcome is None:
        raise StorageError(f"lease {lease.id}: the database went away while recovering it")
    if not ended:
        return 0
    log.warning(
        "recovered lease %s of study %s (trial id %s): %s",
        lease.id,
        lease.study_id,
        lease.trial_id,
        outcome.value,
    )
    return 1


def _fail_unlinked(storage: RDBStorage, lease: StaleLease) -> dict[str, float] | None:
    """Fail the RUNNING trial tagged with this lease; return its parameters (None if there is
    no such trial or it had not suggested them yet). A trial its worker already failed (its
    link was refused) gives its parameters too: they were never tried either."""
    study_id = study_id_of(storage, lease.optuna_study)
    if study_id is None:
        return None
    params = None
    states = (TrialState.RUNNING, TrialState.FAIL)
    for t in storage.get_all_trials(study_id, deepcopy=False, states=states):
        if t.user_attrs.get("lease") == lease.id:
            if t.state == TrialState.RUNNING:
                fail_trial(storage, t._trial_id, Why.LEASE_LOST.value)
            params = {k: float(v) for k, v in t.params.items()} or None
    return params


def fail_orphans(engine: Engine, storage: RDBStorage) -> int:
    """Fail the RUNNING trials of running studies whose lease is gone; return how many.

    Such a trial can never be finished by its worker (the lease was recovered, or the worker
    died between losing its lease and failing the trial), yet it would count as running forever.
    A trial's lease exists from before the trial is created until after it is finished, so a
    RUNNING trial without one is always an orphan; failing one that is being finished at that
    moment is a no-op (a trial finishes once).
    """
    running = running_leased_trials(engine)
    if not running:
        return 0
    live = live_lease_ids(engine, [t.lease for t in running])
    n = 0
    for t in running:
        if t.lease not in live:
            if fail_trial(storage, t.trial_id, ORPHANED) != TrialState.FAIL:
                continue  # told between the two reads: not an orphan
            log.warning("failed orphaned trial %s of %s (lease gone)", t.number, t.optuna_study)
            n += 1
    return n
