"""One batch: B trials of a study, created in Optuna, trained together, told and accounted for.

Like Optuna's `_run_trial`: a pruned trial is told PRUNED, a failed one FAIL with its reason;
every trial is told, and its lease ended, whatever happens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import sqlalchemy as sa
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.trial import TrialState

from storage import queue
from storage.errors import StorageError
from storage.queue import Claim, Lease, Outcome
from storage.recovery import CANCELLED, FINISHED, SHUTDOWN, fail_trial
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
        return CNNConfig(channels=tuple(spec.model.conv_channels), hidden=spec.model.hidden[0])
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
    ended: bool = False  # its lease was ended (or left to recovery): nothing more to do


class BatchRunner:
    def __init__(self, worker: Worker, hb: LeaseHeartbeat) -> None:
        self.worker = worker
        self.hb = hb

    def run(self, claim: Claim, load_data: Callable[[], FoldData]) -> None:
        """Train a claimed batch; every lease ends (or is left to recovery) whatever happens.

        The data set is loaded after the trials exist, so a data set that cannot be loaded fails
        trials (retried, then counted against max_failed) instead of a worker looping on it.
        """
        w = self.worker
        members: list[_Member] = []
        created: dict[int, int] = {}  # lease id -> Optuna trial id, from creation on
        self.hb.hold({lease.id for lease in claim.leases})
        try:
            self._open(claim, members, created)
            w.set_current(claim.study_id, [m.trial.number for m in members])
            log.info(
                "worker %s: study %s trials %s on %s",
                w.id,
                claim.study_id,
                [m.trial.number for m in members],
                w.device,
            )
            results = self._train(claim, members, load_data())
            for m, r in zip(members, results, strict=True):
                self._tell(m, r)
        except Interrupted as stop:
            self._end_all(members, stop.reason, stop.outcome)
        except Exception as exc:
            log.exception("worker %s: batch of study %s failed", w.id, claim.study_id)
            reason = f"{type(exc).__name__}: {exc}"
            self._end_all(members, reason, Outcome.FAILED)
            opened = {m.lease.id for m in members}
            for lease in claim.leases:
                if lease.id in opened:
                    continue
                # Never linked: fail the trial it may have created, and give the slot back.
                if lease.id in created:
                    fail_trial(w.optuna, created[lease.id], reason)
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
            metric=spec.cv.metric or "accuracy",  # resolved at submit
            seed=spec.cv.seed,
        )

        def on_epoch(epoch: int, active: list[int], scores: np.ndarray) -> Iterable[int]:
            return self._on_epoch(claim, members, epoch, active, scores)

        rates = [suggest(m.trial, spec) for m in members]
        if not members:
            return []
        return train_trials(data, model_config(spec), cfg, rates, self.worker.device, on_epoch)

    def _open(self, claim: Claim, members: list[_Member], created: dict[int, int]) -> None:
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
            created[lease.id] = trial._trial_id
            suggest(trial, claim.spec)  # fixes the parameters before the lease records them
            params = {k: float(v) for k, v in trial.params.items()}
            if queue.link_trial(w.engine, lease.id, trial._trial_id, trial.number, params, w.id):
                members.append(_Member(lease, trial))
            else:
                fail_trial(w.optuna, trial._trial_id, "lease lost before training started")
                del created[lease.id]

    def _on_epoch(
        self,
        claim: Claim,
        members: list[_Member],
        epoch: int,
        active: list[int],
        scores: np.ndarray,
    ) -> list[int]:
        if self.worker.stopping:
            raise Interrupted(SHUTDOWN, Outcome.RELEASED)
        status = self.hb.ended.get(claim.study_id) or self._ended_status(claim.study_id)
        if status is not None:
            reason = CANCELLED if status == "cancelled" else f"study {status}"
            raise Interrupted(reason, Outcome.DROPPED)
        stop = []
        for row, i in enumerate(active):
            m = members[i]
            if m.lease.id in self.hb.lost:
                self._lose(m, "lease lost: recovered by another process")
                stop.append(i)
                continue
            try:
                m.trial.report(float(scores[row].mean()), epoch)
                prune = m.trial.should_prune()
            except UpdateFinishedTrialError:
                # Recovery failed the trial (we looked stale for a moment): it is retried.
                self._lose(m, "finished elsewhere while training")
                stop.append(i)
                continue
            if prune:
                m.pruned = True
                stop.append(i)
        return stop

    def _ended_status(self, study_id: int) -> str | None:
        """The study's status if it has ended (a cancel), read at every epoch: one primary-key
        lookup, so a cancel stops training at the next epoch, not at the next heartbeat."""
        try:
            return queue.ended_status(self.worker.engine, study_id)
        except StorageError:
            return None  # the heartbeat will tell

    def _lose(self, m: _Member, reason: str) -> None:
        """A member another process has taken over: make sure its trial is failed, end its lease
        (a no-op where recovery ended it), and train it no further."""
        m.lost = True
        log.warning("trial %s: %s", m.trial.number, reason)
        state = fail_trial(self.worker.optuna, m.trial._trial_id, reason)
        self._finish(m, Outcome.DONE if state in FINISHED else Outcome.FAILED, reason)

    def _tell(self, m: _Member, r: TrialResult) -> None:
        if m.ended:
            return  # lost, and ended in _lose
        folds = [float(s) for s in r.fold_scores]
        mean = float(np.mean(folds))
        if not np.isfinite(folds).all() and not m.pruned:  # a pruned one is told PRUNED
            reason = "non-finite score (training diverged)"
            state = fail_trial(self.worker.optuna, m.trial._trial_id, reason)
            self._finish(m, Outcome.DONE if state in FINISHED else Outcome.FAILED, reason)
            return
        attrs: dict[str, object] = {
            "epochs": r.epochs_run,
            "train_seconds": round(r.train_seconds, 4),
        }
        if np.isfinite(folds).all():
            attrs |= {
                "fold_scores": folds,
                "score_mean": mean,
                # ddof=1: the sample std, which the one-standard-error rule divides by sqrt(K)
                "score_std": float(np.std(folds, ddof=1)) if len(folds) > 1 else 0.0,
            }
        else:  # pruned on a non-finite score (JSON has no NaN): no scores, the reason
            attrs["reason"] = "non-finite score (training diverged)"
        try:
            for k, v in attrs.items():
                m.trial.set_user_attr(k, v)
            if m.pruned:
                state = m.trial.study.tell(m.trial, state=TrialState.PRUNED).state
            else:
                state = m.trial.study.tell(m.trial, mean).state
        except (UpdateFinishedTrialError, RuntimeError, ValueError) as exc:
            state = self.worker.optuna.get_trial(m.trial._trial_id).state
            log.warning("trial %s was finished elsewhere (%s): %s", m.trial.number, state, exc)
        except (StorageError, StorageInternalError, sa.exc.SQLAlchemyError) as exc:
            # Left to recovery: the lease goes stale and the trial's Optuna state decides.
            log.warning("could not tell trial %s: %s", m.trial.number, exc)
            return
        self._finish(m, Outcome.DONE if state in FINISHED else Outcome.FAILED, "told as failed")

    def _end_all(self, members: list[_Member], reason: str, outcome: Outcome) -> None:
        """Interrupted: a member already pruned is told so; the others fail with `reason`.

        Members already ended are skipped, and one member's error never stops the others: a
        lease this cannot end goes stale and is recovered.
        """
        for m in members:
            if m.ended:
                continue
            try:
                self._end_one(m, reason, outcome)
            except Exception:
                log.exception("trial %s: could not end it; left to recovery", m.trial.number)
                m.ended = True

    def _end_one(self, m: _Member, reason: str, outcome: Outcome) -> None:
        state: TrialState | None = None
        if m.pruned:
            try:
                state = m.trial.study.tell(m.trial, state=TrialState.PRUNED).state
            except (UpdateFinishedTrialError, RuntimeError, ValueError):
                state = None  # finished elsewhere: fail_trial reads its final state
        if state is None:
            state = fail_trial(self.worker.optuna, m.trial._trial_id, reason)
        self._finish(m, Outcome.DONE if state in FINISHED else outcome, reason)

    def _finish(self, m: _Member, outcome: Outcome, reason: str | None) -> None:
        m.ended = True
        for attempt in range(5):
            try:
                queue.finish(self.worker.engine, m.lease.id, outcome, reason)
                return
            except StorageError as exc:
                log.warning("could not end lease %s (%s); retrying", m.lease.id, exc)
                time.sleep(1.0 + attempt)
        # Left to recovery: the lease goes stale and the trial's Optuna state decides.
