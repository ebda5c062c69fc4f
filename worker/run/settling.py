"""`search.stop_when_settled` on the worker: the answer before a batch, and after it the check
that ends the search early (core/answer/settled.py's rule, storage's `queue.stop_search`)."""

from __future__ import annotations

import logging

from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Engine

from droptune.core.answer.rules import Answer, answer
from droptune.core.answer.settled import curve_fit, settled
from droptune.storage.jobs import queue
from droptune.storage.jobs.queue import Claim
from droptune.worker.run.objective import open_study

log = logging.getLogger("droptune.worker")

# Finished trials a batch must find for its "before" to count (a first batch always moves it).
MIN_BEFORE = 4

Before = tuple[Answer, list[FrozenTrial]]


def answer_now(storage: RDBStorage, claim: Claim) -> Before:
    """The answer from the study's finished trials as they are now, and those trials."""
    study = open_study(storage, claim.optuna_study, claim.spec)
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return answer(finished, claim.spec), finished


def stop_if_settled(
    engine: Engine, storage: RDBStorage, claim: Claim, before: Before, worker_id: str
) -> bool:
    """End the search when the batch just told could not move the answer; the batches other
    workers hold still finish. True when it ended it."""
    if len(before[1]) < MIN_BEFORE:
        return False
    after, finished = answer_now(storage, claim)
    fit = curve_fit(finished, claim.spec)
    search = claim.spec.search
    width = search.dropout_high - search.dropout_low
    study = open_study(storage, claim.optuna_study, claim.spec)
    ran = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    why = settled(before[0], after, fit, ran, search.n_trials, width)
    if why is None or not queue.stop_search(engine, claim.study_id, why):
        return False
    log.info("worker %s: study %s: %s", worker_id, claim.study_id, why)
    return True
