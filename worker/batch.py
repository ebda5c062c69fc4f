"""One batch: B trials of a study, created in Optuna, trained together, told and accounted for.

Like Optuna's `_run_trial`: a pruned trial is told PRUNED, a failed one FAIL with its reason;
every trial is told, and its lease ended, whatever happens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from storage import queue
from storage.errors import StorageError
from storage.queue import Claim, Lease, Outcome
from storage.recovery import fail_trial
from storage.spec import StudySpec
from worker.data import FoldData
from worker.engine import TrainConfig, TrialResult, train_trials
from worker.heartbeat import LeaseHeartbeat
from worker.models import CNNConfig, MLPConfig
from worker.objective import new_trial, open_study, suggest

if TYPE_CHECKING:
    from worker.loop import Worker


def model_config(spec: StudySpec) -> MLPConfig | CNNConfig:
    if spec.model.kind == "cnn":
        return CNNConfig(channels=tuple(spec.model.channels), hidden=spec.model.hidden[0])
    return MLPConfig(hidden=tuple(spec.model.hidden))


log = logging.getLogger("droptune.worker")


class Interrupted(Exception):
    """The whole batch stops at an epoch boundary: its study ended, or the worker is stopping."""

    def __init__(self, reason: str, outcome: Outcome) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


@dataclass
class _Member:
    lease: Lease
    trial: optuna.Trial
    pruned: bool = False
    lost: bool = False


class BatchRunner:
    def __init__(self, worker: Worker, hb: LeaseHeartbeat) -> None:
        self.worker = worker
        self.hb = hb

    def run(self, claim: Claim, data: FoldData) -> None:
        w = self.worker
        members: list[_Member] = []
        self.hb.hold({lease.id for lease in claim.leases})
        try:
            self._open(claim, members)
            w.set_current(claim.study_id, [m.trial.number for m in members])
            log.info(
                "worker %s: study %s trials %s on %s",
                w.id,
                claim.study_id,
                [m.trial.number for m in members],
                w.device,
            )
            results = self._train(claim, members, data)
            for m, r in zip(members, results, strict=True):
                self._tell(m, r)
        except Interrupted as stop:
            self._end_all(members, stop.reason, stop.outcome)
        except Exception as exc:
            log.exception("worker %s: batch of study %s failed", w.id, claim.study_id)
            self._end_all(members, f"{type(exc).__name__}: {exc}", Outcome.FAILED)
            opened = {m.lease.id for m in members}
            for lease in claim.leases:
                if lease.id not in opened:  # never got its trial: give the slot back
                    queue.finish(w.engine, lease.id, Outcome.RELEASED)
        finally:
            self.hb.hold(set())
            w.set_current(None, [])
            self.hb.beat()  # /workers shows the worker idle now, not at the next beat

    def _train(self, claim: Claim, members: list[_Member], data: FoldData) -> list[TrialResult]:
        spec = claim.spec
        cfg = TrainConfig(
            epochs=spec.training.epochs,
            batch_size=spec.training.batch_size,
            lr=spec.training.lr,
            weight_decay=spec.training.weight_decay,
            metric=spec.cv.metric,
            seed=spec.cv.seed,
        )

        def on_epoch(epoch: int, active: list[int], scores: np.ndarray) -> Iterable[int]:
            return self._on_epoch(claim, members, epoch, active, scores)

        rates = [suggest(m.trial, spec) for m in members]
        if not members:
            return []
        return train_trials(data, model_config(spec), cfg, rates, self.worker.device, on_epoch)

    def _open(self, claim: Claim, members: list[_Member]) -> None:
        """Create one Optuna trial per lease and link them; a lease lost meanwhile is dropped."""
        w = self.worker
        study = open_study(w.optuna, claim.optuna_study, claim.spec)
        for lease in claim.leases:
            attrs: dict[str, Any] = {
                "worker": w.id,
                "device": str(w.device),
                "attempt": lease.attempt,
                "lease": lease.id,  # lets recovery find the trial if we die before linking it
            }
            trial = new_trial(study, lease.params, attrs)
            suggest(trial, claim.spec)  # fixes the parameters before the lease records them
            params = {k: float(v) for k, v in trial.params.items()}
            if queue.link_trial(w.engine, lease.id, trial._trial_id, trial.number, params):
                members.append(_Member(lease, trial))
            else:
                fail_trial(w.optuna, trial._trial_id, "lease lost before training started")

    def _on_epoch(
        self,
        claim: Claim,
        members: list[_Member],
        epoch: int,
        active: list[int],
        scores: np.ndarray,
    ) -> list[int]:
        if self.worker.stopping:
            raise Interrupted("worker shutdown: released for retry", Outcome.RELEASED)
        if claim.study_id in self.hb.ended:
            raise Interrupted("cancelled", Outcome.DROPPED)
        stop = []
        for row, i in enumerate(active):
            m = members[i]
            if m.lease.id in self.hb.lost:
                m.lost = True
                stop.append(i)
                continue
            m.trial.report(float(scores[row].mean()), epoch)
            if m.trial.should_prune():
                m.pruned = True
                stop.append(i)
        return stop

    def _tell(self, m: _Member, r: TrialResult) -> None:
        if m.lost:
            return  # another process failed and re-queued it
        folds = [float(s) for s in r.fold_scores]
        attrs = {
            "fold_scores": folds,
            "score_mean": float(np.mean(folds)),
            "score_std": float(np.std(folds)),
            "epochs": r.epochs_run,
            "train_seconds": round(r.train_seconds, 4),
        }
        try:
            for k, v in attrs.items():
                m.trial.set_user_attr(k, v)
            if m.pruned:
                m.trial.study.tell(m.trial, state=TrialState.PRUNED)
            else:
                m.trial.study.tell(m.trial, float(np.mean(folds)))
        except (UpdateFinishedTrialError, RuntimeError, ValueError) as exc:
            state = self.worker.optuna.get_trial(m.trial._trial_id).state
            if state not in (TrialState.COMPLETE, TrialState.PRUNED):
                log.warning("trial %s was finished elsewhere (%s)", m.trial.number, exc)
                return
            log.warning("trial %s: told, but: %s", m.trial.number, exc)
        except StorageError as exc:
            log.warning("could not tell trial %s: %s", m.trial.number, exc)
            return
        self._finish(m, Outcome.DONE, None)

    def _end_all(self, members: list[_Member], reason: str, outcome: Outcome) -> None:
        for m in members:
            if m.lost:
                continue
            fail_trial(self.worker.optuna, m.trial._trial_id, reason)
            self._finish(m, outcome, reason)

    def _finish(self, m: _Member, outcome: Outcome, reason: str | None) -> None:
        for attempt in range(5):
            try:
                queue.finish(self.worker.engine, m.lease.id, outcome, reason)
                return
            except StorageError as exc:
                log.warning("could not end lease %s (%s); retrying", m.lease.id, exc)
                time.sleep(1.0 + attempt)
        # Left to recovery: the lease goes stale and the trial's Optuna state decides.
