"""One batch: B trials of a study, created in Optuna, trained together, told and accounted for.

Like Optuna's `_run_trial`: a pruned trial is told PRUNED, a failed one FAIL with its reason;
every trial is told, and its lease ended, whatever happens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import sqlalchemy as sa
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from droptune.core.errors import StorageError
from droptune.core.spec.study import StudySpec
from droptune.core.states import Outcome, StudyStatus
from droptune.storage.jobs import queue
from droptune.storage.jobs.lifecycle import NO_TRIAL, Why, fail_trial, settle
from droptune.storage.jobs.queue import Claim, Lease
from droptune.storage.submit import admission
from droptune.worker.engine.custom import FactoryError
from droptune.worker.engine.data import FoldData
from droptune.worker.engine.sizing import free_memory, is_oom, oom_reason
from droptune.worker.engine.stacked import (
    TrainConfig,
    TrialResult,
)
from droptune.worker.run import plugins, settling
from droptune.worker.run.context import BatchContext
from droptune.worker.run.heartbeat import LeaseHeartbeat
from droptune.worker.run.objective import level_with, median_at, new_trial, open_study, suggest
from droptune.worker.run.pruning import PairedPruner

log = logging.getLogger("droptune.worker")


class Interrupted(Exception):
    """The whole batch stops at an epoch boundary: its study ended, or the worker is stopping."""

    def __init__(self, reason: str, why: Why) -> None:
        super().__init__(reason)
        self.reason = reason
        self.why = why


@dataclass
class _Member:
    lease: Lease
    trial: optuna.Trial
    pruned: bool = False
    ended: bool = False  # its lease was ended (or left to recovery): nothing more to do


class BatchRunner:
    def __init__(self, ctx: BatchContext, hb: LeaseHeartbeat) -> None:
        self.ctx = ctx
        self.hb = hb
        self._split_sizes: list[float] = []
        self._engine: str | None = None  # how the last batch trained (stacked, ...)
        self._note: str | None = None  # e.g. a module trained member by member, or its dropout
        self._medians: dict[int, float | None] = {}  # this batch's epoch -> median finished score

    def run(self, claim: Claim, load_data: Callable[[], FoldData]) -> None:
        """Train a claimed batch; every lease ends (or is left to recovery) whatever happens.

        The data set is loaded after the trials exist, so a data set that cannot be loaded fails
        trials (retried, then counted against max_failed) instead of a worker looping on it.
        A batch that runs out of memory is trained again one trial at a time; a trial that runs
        out alone is failed with the reason and not retried.
        """
        ctx = self.ctx
        members: list[_Member] = []
        created: dict[int, int] = {}  # lease id -> Optuna trial id, from creation on
        self.hb.hold({lease.id for lease in claim.leases})
        try:
            self._open(claim, members, created)
            ctx.on_current(claim.study_id, [m.trial.number for m in members])
            log.info(
                "worker %s: study %s trials %s on %s",
                ctx.worker_id,
                claim.study_id,
                [m.trial.number for m in members],
                ctx.device,
            )
            self._train_batch(claim, members, load_data())
        except Interrupted as stop:
            self._end_all(members, stop.why, stop.reason)
        except Exception as exc:
            # Out of memory alone (or loading the data): failed with the reason and not retried,
            # since its parameters would run out again; the study fails past max_failed.
            oom = is_oom(exc)
            if oom or isinstance(exc, FactoryError):  # one line: not droptune's bug
                reason = oom_reason(exc) if oom else f"{type(exc).__name__}: {exc}"
                log.warning("worker %s: study %s: %s", ctx.worker_id, claim.study_id, reason)
            else:
                log.exception("worker %s: batch of study %s failed", ctx.worker_id, claim.study_id)
                # Shown to users: a database error's text (SQL, host) stays in the log.
                reason = f"{type(exc).__name__}: " + (
                    "a database error (see the worker's log)"
                    if isinstance(exc, sa.exc.SQLAlchemyError)
                    else str(exc)
                )
            # A model that cannot be built would fail the same way again: not retried either.
            retry = not oom and not isinstance(exc, FactoryError)
            self._end_all(members, Why.ERROR, reason, retry=retry)
            if isinstance(exc, FactoryError):  # every trial would: the study fails at once
                queue.fail_study(ctx.engine, claim.study_id, reason)
            opened = {m.lease.id for m in members}
            for lease in claim.leases:
                if lease.id not in opened:
                    # Never linked: fail the trial it may have created; the slot goes back.
                    trial_id = created.get(lease.id, NO_TRIAL)
                    self._settle(lease, trial_id, Why.ERROR, reason=reason, linked=False)
        finally:
            self.hb.hold(set())
            ctx.on_current(None, [])
            self.hb.beat()  # /workers shows the worker idle now, not at the next beat
            ctx.publish(claim.study_id)

    def _train_batch(self, claim: Claim, members: list[_Member], data: FoldData) -> None:
        """Train the batch and tell its trials; out of memory with more than one trial, train
        them again one at a time (the engine's scores do not depend on the batch: same folds,
        weights, sample order and masks), telling each as it ends."""
        ctx = self.ctx
        before = (
            settling.answer_now(ctx.optuna, claim) if claim.spec.search.stop_when_settled else None
        )
        try:
            results = self._train(claim, members, data)
        except Exception as exc:
            if not is_oom(exc) or sum(not (m.ended or m.pruned) for m in members) < 2:
                raise
            reason = oom_reason(exc)
        else:
            for m, r in zip(members, results, strict=True):
                self._tell(m, r)
            if before is not None:
                settling.stop_if_settled(ctx.engine, ctx.optuna, claim, before, ctx.worker_id)
            return
        # Out of the except clause: the error's traceback, and the batch's tensors, are gone.
        free_memory(self.ctx.device)
        log.warning(
            "worker %s: study %s: a batch of %d trials ran out of memory (%s); one at a time",
            self.ctx.worker_id,
            claim.study_id,
            len(members),
            reason,
        )
        for m in members:
            if m.ended or m.pruned:
                self._end_all([m], Why.ERROR, reason)  # told PRUNED, or nothing to do
                continue
            alone: str | None = None
            try:
                (result,) = self._train(claim, [m], data)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                alone = oom_reason(exc)
            if alone is None:
                self._tell(m, result)
            else:
                free_memory(self.ctx.device)
                self._end_all([m], Why.ERROR, alone, retry=False)

    def _settle(
        self,
        lease: Lease,
        trial_id: int | None,
        why: Why,
        *,
        linked: bool = True,
        retry: bool = True,
        **kw: Any,
    ) -> None:
        """End one lease through the lifecycle; a trial created but never linked gives its
        slot straight back (RELEASED), as an unlinked lease does. retry=False: a FAILED end
        gives the trial up instead of retrying its parameters (admission.no_retry)."""

        def end(outcome: Outcome, reason: str | None) -> bool:
            if not linked:
                outcome = Outcome.RELEASED
            elif outcome is Outcome.FAILED and not retry:
                admission.no_retry(self.ctx.engine, lease.id)
            return queue.finish(self.ctx.engine, lease.id, outcome, reason)

        custom = not linked or not retry
        settle(
            self.ctx.engine,
            self.ctx.optuna,
            lease.id,
            trial_id,
            why,
            end=end if custom else None,
            **kw,
        )

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
        self._medians = {}
        self._split_sizes = [
            round(float(np.mean(data.train_len_host)), 1),
            round(float(np.mean(data.val_len_host)), 1),
        ]
        kind, model = plugins.model_kind(spec), plugins.model_config(spec, self.ctx.models)
        results, note, engine = kind.train(data, model, cfg, rates, self.ctx.device, on_epoch)
        said = f"{len(members)} trials x {data.k} folds trained {engine}"
        log.info("study %s: %s%s", claim.study_id, said, f" ({note})" if note else "")
        # recorded as each trial is told (_tell): one lost meanwhile has ended and takes none
        self._engine, self._note = engine, note
        return results

    def _open(self, claim: Claim, members: list[_Member], created: dict[int, int]) -> None:
        """Create one Optuna trial per lease and link them; a lease lost meanwhile is dropped
        (recovery took it over and ends it: this trial is only failed)."""
        ctx = self.ctx
        study = open_study(ctx.optuna, claim.optuna_study, claim.spec)
        for lease in claim.leases:
            attrs: dict[str, Any] = {
                "worker": ctx.worker_id,
                "device": str(ctx.device),
                "attempt": lease.attempt,
                "lease": lease.id,  # lets recovery find the trial if we die before linking it
            }
            trial = new_trial(study, lease.params, attrs)
            created[lease.id] = trial._trial_id
            suggest(trial, claim.spec)  # fixes the parameters before the lease records them
            params = {k: float(v) for k, v in trial.params.items()}
            linked = queue.link_trial(
                ctx.engine, lease.id, trial._trial_id, trial.number, params, ctx.worker_id
            )
            if linked:
                members.append(_Member(lease, trial))
            else:
                fail_trial(ctx.optuna, trial._trial_id, "lease lost before training started")
                del created[lease.id]

    def _on_epoch(
        self,
        claim: Claim,
        members: list[_Member],
        epoch: int,
        active: list[int],
        scores: np.ndarray,
    ) -> list[int]:
        if self.ctx.stop.is_set():
            raise Interrupted(Why.SHUTDOWN.value, Why.SHUTDOWN)
        status = self.hb.ended.get(claim.study_id) or self._ended_status(claim.study_id)
        if status == StudyStatus.CANCELLED:
            raise Interrupted(Why.CANCELLED.value, Why.CANCELLED)
        if status is not None:
            raise Interrupted(f"study {status}", Why.STUDY_ENDED)
        pruner = members[active[0]].trial.study.pruner if active else None
        if isinstance(pruner, PairedPruner):  # decides for the whole stack at once
            train, val = self._split_sizes
            numbers = [members[i].trial.number for i in active]
            pruner.observe(epoch, numbers, scores, val / train if train else None)
        stop = []
        for row, i in enumerate(active):
            m = members[i]
            if m.lease.id in self.hb.lost:
                self._lose(m, Why.LOST.value)
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
            paired = isinstance(pruner, PairedPruner)  # its own guard: the gap's pace
            if (
                prune
                and not paired
                and self._level_with_finished(m.trial, epoch, scores[row], claim.spec)
            ):
                prune = False
            if prune:
                m.pruned = True
                stop.append(i)
        return stop

    def _level_with_finished(
        self, trial: optuna.Trial, epoch: int, folds: np.ndarray, spec: StudySpec
    ) -> bool:
        """Whether a trial the pruner would stop is within one standard error (of its own split
        scores this epoch) of the median COMPLETE trial at this epoch. Median pruning stops
        about half of the trials even when their scores are all but equal (a digits study lost
        rates scoring 0.9770 ± 0.0018 at epoch 19 of 20, level with the best): such a trial is
        kept, since the data cannot tell it from the trials that finished."""
        if epoch not in self._medians:  # one read per epoch for the whole batch
            done = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            self._medians[epoch] = median_at(done, epoch)
        return level_with(folds, self._medians[epoch], spec.cv.direction == "maximize")

    def _ended_status(self, study_id: int) -> str | None:
        """The study's status if it has ended (a cancel), read at every epoch: one primary-key
        lookup, so a cancel stops training at the next epoch, not at the next heartbeat."""
        try:
            return queue.ended_status(self.ctx.engine, study_id)
        except StorageError:
            return None  # the heartbeat will tell

    def _lose(self, m: _Member, reason: str) -> None:
        """A member another process has taken over: make sure its trial is failed, end its lease
        (a no-op where recovery ended it), and train it no further."""
        log.warning("trial %s: %s", m.trial.number, reason)
        self._settle(m.lease, m.trial._trial_id, Why.LOST, reason=reason)
        m.ended = True

    def _tell(self, m: _Member, r: TrialResult) -> None:
        if m.ended:
            return  # lost, and ended in _lose
        folds = [float(s) for s in r.fold_scores]
        finite = bool(np.isfinite(folds).all())
        if not finite and not m.pruned:  # a pruned one is told PRUNED
            self._settle(m.lease, m.trial._trial_id, Why.DIVERGED)
            m.ended = True
            return
        attrs: dict[str, object] = {
            "epochs": r.epochs_run,
            "train_seconds": round(r.train_seconds, 4),
            "split_sizes": self._split_sizes,  # the paired test's n_train, n_test
        }
        if self._engine is not None:
            attrs["engine"] = self._engine
        if self._note:
            attrs["warning"] = self._note
        if finite:
            attrs |= {
                "fold_scores": folds,
                "score_mean": float(np.mean(folds)),
                # ddof=1: the sample std, which the one-standard-error rule divides by sqrt(K)
                "score_std": float(np.std(folds, ddof=1)) if len(folds) > 1 else 0.0,
            }
        else:  # pruned on a non-finite score (JSON has no NaN): no scores, the reason
            attrs["reason"] = Why.DIVERGED.value
        why = Why.PRUNED if m.pruned else Why.TRAINED
        value = float(np.mean(folds)) if finite else None
        self._settle(m.lease, m.trial._trial_id, why, trial=m.trial, value=value, attrs=attrs)
        m.ended = True  # after: a member whose settle raised is ended by the batch's except

    def _end_all(
        self, members: list[_Member], why: Why, reason: str, *, retry: bool = True
    ) -> None:
        """Interrupted: a member already pruned is told so; the others end with `why`
        (retry=False: their parameters are not retried).

        Members already ended are skipped, and one member's error never stops the others: a
        lease this cannot end goes stale and is recovered.
        """
        for m in members:
            if m.ended:
                continue
            m.ended = True
            try:
                if m.pruned:
                    self._settle(m.lease, m.trial._trial_id, Why.PRUNED, trial=m.trial)
                else:
                    self._settle(m.lease, m.trial._trial_id, why, reason=reason, retry=retry)
            except Exception:
                log.exception("trial %s: could not end it; left to recovery", m.trial.number)
