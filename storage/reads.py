"""Read models: a study with its progress and best, its trials, and pages of studies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Engine

from droptune.storage.answer import answer, primary_rate, score_of
from droptune.storage.curve import Curve, build_curve
from droptune.storage.db import transaction
from droptune.storage.errors import NotFound
from droptune.storage.lifecycle import is_interruption
from droptune.storage.optuna_bridge import study_id_of
from droptune.storage.schemas import (
    ENDED,
    BestOut,
    Progress,
    StudyOut,
    StudyPage,
    TestScore,
    TrialOut,
)
from droptune.storage.spec import StudySpec
from droptune.storage.tables import studies

# The refit's state as shown: "running" is the leased state; None when there is no refit.
REFIT_SHOWN = {"waiting": "waiting", "ready": "ready", "running": "running", "done": "done"}


class Reader:
    """Reads droptune's rows and Optuna's trials of the same database, scoped to an owner."""

    def __init__(self, engine: Engine, optuna: RDBStorage) -> None:
        self.engine = engine
        self.optuna = optuna

    def _row(self, study_id: int, owner: str | None) -> sa.Row[Any]:
        """The study's row; `owner` None only for workers, which act for every owner."""
        where = [studies.c.id == study_id]
        if owner is not None:
            where.append(studies.c.owner == owner)
        with transaction(self.engine, read_only=True) as conn:
            row = conn.execute(sa.select(studies).where(*where)).one_or_none()
        if row is None:
            raise NotFound(f"study {study_id} not found")
        return row

    def status(self, study_id: int, owner: str) -> str:
        return str(self._row(study_id, owner).status)

    def _trials(self, row: sa.Row[Any]) -> list[FrozenTrial]:
        oid = study_id_of(self.optuna, row.optuna_study) if row.optuna_study else None
        if oid is None:  # no worker has opened it yet
            return []
        return list(self.optuna.get_all_trials(oid, deepcopy=False))

    def study(self, study_id: int, owner: str) -> StudyOut:
        row = self._row(study_id, owner)
        return self._study_out(row, self._trials(row))

    def _study_out(self, row: sa.Row[Any], trials: Sequence[FrozenTrial]) -> StudyOut:
        count = {s: 0 for s in TrialState}
        interrupted = 0
        for t in trials:
            count[t.state] += 1
            if t.state == TrialState.FAIL and is_interruption(t.user_attrs.get("reason")):
                interrupted += 1
        progress = Progress(
            n_trials=row.n_trials,
            complete=count[TrialState.COMPLETE],
            pruned=count[TrialState.PRUNED],
            failed=count[TrialState.FAIL] - interrupted,
            interrupted=interrupted,
            running=count[TrialState.RUNNING],
            refit=REFIT_SHOWN.get(row.refit_state),
        )
        best = self._best_out(row, trials) if trials else None
        return StudyOut(
            id=row.id,
            name=row.name,
            status=row.status,
            reason=row.reason,
            priority=row.priority,
            owner=row.owner,
            created_at=row.created_at,
            started_at=row.started_at,
            ended_at=row.ended_at,
            optuna_study=row.optuna_study,
            spec=StudySpec.stored(row.spec),
            progress=progress,
            best=best,
        )

    def best(self, study_id: int, owner: str) -> BestOut:
        row = self._row(study_id, owner)
        return self._best_out(row, self._trials(row))

    def _best_out(self, row: sa.Row[Any], trials: Sequence[FrozenTrial]) -> BestOut:
        spec = StudySpec.stored(row.spec)
        a = answer(trials, spec)
        best, one_se = a.best, a.one_se
        return BestOut(
            study_id=row.id,
            dropout=primary_rate(best.params) if best else None,
            params={k: float(v) for k, v in best.params.items()} if best else {},
            score=score_of(best) if best else None,
            metric=spec.cv.metric,
            direction=spec.cv.direction,
            trial=best.number if best else None,
            one_se_dropout=primary_rate(one_se.params) if one_se else None,
            one_se_trial=one_se.number if one_se else None,
            complete=row.status in ENDED,
            status=row.status,
            recommended=a.recommended,
            tied=a.tied,
            warnings=a.warnings,
            test=TestScore.model_validate(row.refit_result) if row.refit_result else None,
        )

    def trials(self, study_id: int, owner: str) -> list[TrialOut]:
        row = self._row(study_id, owner)
        return self._trial_outs(row, self._trials(row))

    def _trial_outs(self, row: sa.Row[Any], trials: Sequence[FrozenTrial]) -> list[TrialOut]:
        p = answer(trials, StudySpec.stored(row.spec)).p  # the best found once, not per trial
        return [_trial_out(t, p.get(t.number)) for t in sorted(trials, key=lambda t: t.number)]

    def curve(self, study_id: int, owner: str) -> Curve:
        return self._curve(self._row(study_id, owner))[0]

    def for_dashboard(self, study_id: int) -> tuple[str, Curve, BestOut]:
        """(Optuna study name, curve, answer) of any owner's study, for a worker to publish."""
        row = self._row(study_id, None)
        return (row.optuna_study, *self._curve(row))

    def _curve(self, row: sa.Row[Any]) -> tuple[Curve, BestOut]:
        """The dropout curve and the answer, from one load of the trials."""
        trials = self._trials(row)
        best = self._best_out(row, trials)
        spec = StudySpec.stored(row.spec)
        return build_curve(row.id, spec, best, self._trial_outs(row, trials)), best

    def page(self, owner: str, status: str | None, offset: int, limit: int) -> StudyPage:
        where = [studies.c.owner == owner]
        if status is not None:
            where.append(studies.c.status == status)
        with transaction(self.engine, read_only=True) as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(studies).where(*where)
            ).scalar_one()
            rows = conn.execute(
                sa.select(studies)
                .where(*where)
                .order_by(studies.c.id.desc())
                .offset(offset)
                .limit(limit)
            ).all()
        items = [self._study_out(r, self._trials(r)) for r in rows]
        return StudyPage(items=items, total=total, offset=offset, limit=limit)


def _trial_out(t: FrozenTrial, p_vs_best: float | None) -> TrialOut:
    u = t.user_attrs
    return TrialOut(
        number=t.number,
        state=t.state.name,
        params={k: float(v) for k, v in t.params.items()},
        value=t.value if t.state == TrialState.COMPLETE else None,
        score=score_of(t),
        epochs=u.get("epochs"),
        train_seconds=u.get("train_seconds"),
        device=u.get("device"),
        worker=u.get("worker"),
        attempt=int(u.get("attempt", 0)),
        # Why it failed. Recovery writes the reason just before the FAIL state, so a trial its
        # worker completed in between may carry one: it is not shown then.
        reason=u.get("reason") if t.state == TrialState.FAIL else None,
        p_vs_best=p_vs_best,
        started_at=t.datetime_start,
        ended_at=t.datetime_complete,
    )
