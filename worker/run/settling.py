"""`search.stop_when_settled` on the worker: the answer before a batch, and after it the check
that ends the search early (core/answer/settled.py's rule, storage's `early_stop.stop_search`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Engine

from droptune.core.answer.rules import Answer, answer
from droptune.core.answer.settled import model_fit, settled
from droptune.storage.jobs import early_stop
from droptune.storage.jobs.queue import Claim
from droptune.worker.run.objective import open_study

log = logging.getLogger("droptune.worker")

# Finished trials a batch must find for its "before" to count (a first batch always moves it).
MIN_BEFORE = 3  # the paired pruner leaves 3-4 of a first design of 6 finished


@dataclass(frozen=True)
class Snapshot:
    """The study's answer at one moment, the COMPLETE trials it came from, and how many trials
    had finished (COMPLETE or PRUNED)."""

    answer: Answer
    complete: list[FrozenTrial]
    finished: int


def answer_now(storage: RDBStorage, claim: Claim) -> Snapshot:
    """The answer from the study's finished trials as they are now (one read of them)."""
    study = open_study(storage, claim.optuna_study, claim.spec)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    return Snapshot(answer(complete, claim.spec), complete, len(done))


def stop_if_settled(
    engine: Engine, storage: RDBStorage, claim: Claim, before: Snapshot, worker_id: str
) -> bool:
    """End the search when the batch just told could not move the answer; the batches other
    workers hold still finish. True when it ended it."""
    if len(before.complete) < MIN_BEFORE:
        return False
    after = answer_now(storage, claim)
    search = claim.spec.search
    fit = model_fit(after.complete, claim.spec)
    width = search.dropout_high - search.dropout_low
    why = settled(before.answer, after.answer, fit, after.finished, search.n_trials, width)
    if why is None or not early_stop.stop_search(engine, claim.study_id, why):
        return False
    log.info("worker %s: study %s: %s", worker_id, claim.study_id, why)
    return True
