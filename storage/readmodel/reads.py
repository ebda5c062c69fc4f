"""Read models: a study with its progress and best, its trials, and pages of studies.

A read costs a fixed number of statements whatever the number of trials or studies: progress
is one aggregate over Optuna's `trials` (`answer_cache.count_trials`), the answer is the one
cached on the study's row while it is current, and trials are read a page at a time with SQL
over Optuna's tables. Only a stale answer loads the trials it needs (COMPLETE ones, with the
attributes the answer reads), once, and stores it again; see storage/readmodel/answer_cache.py.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Connection, Engine

from droptune.core.answer.curve import DRAWN, Curve, build_curve
from droptune.core.answer.rules import answer, score_of
from droptune.core.answer.settled import PREFIX as SETTLED
from droptune.core.errors import NotFound
from droptune.core.schemas import (
    BestOut,
    Progress,
    StudyOut,
    StudyPage,
    TestScore,
    TrialOut,
    TrialPage,
)
from droptune.core.spec.study import StudySpec
from droptune.core.states import ENDED, RefitState
from droptune.storage.readmodel import answer_cache
from droptune.storage.readmodel.answer_cache import (
    CachedAnswer,
    Counts,
    PValues,
    cached,
    count_trials,
    finished_of,
)
from droptune.storage.readmodel.trials import load_trials
from droptune.storage.sql.db import transaction
from droptune.storage.sql.tables import studies

# The refit's state as shown: "running" is the leased state; None when there is no refit.
REFIT_SHOWN = {s.value: s.value for s in RefitState}
ROW = [c for c in studies.c if c.name != "answer_p"]  # the per-trial p only where it is shown
LOCKS = 64  # stripes of the lock that lets one thread per study recompute a stale answer


class Reader:
    """Reads droptune's rows and Optuna's tables of the same database, scoped to an owner.

    Every read goes through `engine` (one read-only transaction: on SQLite one snapshot for
    the row, the counts and the trials). `optuna` is not read any more; it stays in the
    signature for the callers that pass it (service/app.py, worker/run/batch.py)."""

    def __init__(self, engine: Engine, optuna: RDBStorage | None = None) -> None:
        self.engine = engine
        self.optuna = optuna
        self._locks = [threading.Lock() for _ in range(LOCKS)]

    def _select_row(
        self,
        conn: Connection,
        study_id: int,
        owner: str | None,
        *,
        p: bool = False,
        finished: bool = False,
    ) -> sa.Row[Any]:
        """The study's row (with `answer_p`, and its `finished` trials counted, when asked);
        `owner` None for workers and admins, which act for every owner."""
        q = _row_statement(owner is not None, p, finished)
        row = conn.execute(q, {"id": study_id, "owner": owner}).one_or_none()
        if row is None:
            raise NotFound(f"study {study_id} not found")
        return row

    def status(self, study_id: int, owner: str | None) -> str:
        with transaction(self.engine, read_only=True) as conn:
            return str(self._select_row(conn, study_id, owner).status)

    def study(self, study_id: int, owner: str | None) -> StudyOut:
        """Two statements: the row, and its trials counted by state."""
        with transaction(self.engine, read_only=True) as conn:
            row = self._select_row(conn, study_id, owner)
            counts = _counts_of(conn, row)
        return self._study_out(row, counts)

    def best(self, study_id: int, owner: str | None) -> BestOut:
        """One statement: the row with its finished trials counted, to check its answer."""
        with transaction(self.engine, read_only=True) as conn:
            row = self._select_row(conn, study_id, owner, finished=True)
        return _best_out(row, self._answer(row, row.finished)[0])

    def trials(
        self, study_id: int, owner: str | None, offset: int = 0, limit: int | None = None
    ) -> list[TrialOut]:
        """The study's trials by number, `limit` of them from `offset` (None: all), each COMPLETE
        one with its p against the best from the cached answer."""
        return self._trials(study_id, owner, offset, limit)[0]

    def trial_page(self, study_id: int, owner: str | None, offset: int, limit: int) -> TrialPage:
        """A page of trials (as `trials`) with the study's trial count: GET /trials."""
        items, total = self._trials(study_id, owner, offset, limit, count=True)
        return TrialPage(items=items, total=total, offset=offset, limit=limit)

    def _trials(
        self, study_id: int, owner: str | None, offset: int, limit: int | None, count: bool = False
    ) -> tuple[list[TrialOut], int]:
        with transaction(self.engine, read_only=True) as conn:
            row = self._select_row(conn, study_id, owner, p=True, finished=True)
            page = load_trials(conn, row.optuna_study, offset=offset, limit=limit)
            total = _counts_of(conn, row).total if count else len(page)
        p = self._answer(row, row.finished)[1]
        return [_trial_out(t, p.get(str(t.number))) for t in page], total

    def curve(self, study_id: int, owner: str | None) -> Curve:
        return self._curve(study_id, owner)[0]

    def for_dashboard(self, study_id: int) -> tuple[str, Curve, BestOut]:
        """(Optuna study name, curve, answer) of any owner's study, for a worker to publish;
        the answer is kept on the study's row on the way (the worker computes it anyway)."""
        curve, best, name = self._curve(study_id, None)
        return name, curve, best

    def _curve(self, study_id: int, owner: str | None) -> tuple[Curve, BestOut, str]:
        """The dropout curve and the answer, from one load of the trials the curve draws."""
        with transaction(self.engine, read_only=True) as conn:
            row = self._select_row(conn, study_id, owner, p=True, finished=True)
            drawn = load_trials(conn, row.optuna_study, states=DRAWN)
        hit = cached(row, row.finished)
        if hit is not None:
            ans, p = hit, row.answer_p or {}
        else:  # the answer reads COMPLETE trials only: the ones just loaded will do
            ans, p = self._compute(row, drawn, row.finished)
        best = _best_out(row, ans)
        outs = [_trial_out(t, p.get(str(t.number))) for t in drawn]
        return build_curve(row.id, StudySpec.stored(row.spec), best, outs), best, row.optuna_study

    def page(self, owner: str | None, status: str | None, offset: int, limit: int) -> StudyPage:
        """A page of the owner's studies (every owner's for None), newest first: three
        statements (the total, the rows, one aggregate of their trials), plus a recompute for
        each study whose answer is stale."""
        where = [] if owner is None else [studies.c.owner == owner]
        if status is not None:
            where.append(studies.c.status == status)
        with transaction(self.engine, read_only=True) as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(studies).where(*where)
            ).scalar_one()
            rows = conn.execute(
                sa.select(*ROW)
                .where(*where)
                .order_by(studies.c.id.desc())
                .offset(offset)
                .limit(limit)
            ).all()
            counts = count_trials(conn, [r.optuna_study for r in rows])
        items = [self._study_out(r, counts.get(r.optuna_study, Counts())) for r in rows]
        return StudyPage(items=items, total=total, offset=offset, limit=limit)

    def _study_out(self, row: Any, counts: Counts) -> StudyOut:
        progress = Progress(
            n_trials=row.n_trials,
            complete=counts.complete,
            pruned=counts.pruned,
            failed=counts.fail - counts.interrupted,
            interrupted=counts.interrupted,
            running=counts.running,
            refit=REFIT_SHOWN.get(row.refit_state),
        )
        best = _best_out(row, self._answer(row, counts.finished)[0]) if counts.total else None
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

    def _answer(self, row: Any, finished: int) -> tuple[CachedAnswer, PValues]:
        """The answer and each COMPLETE trial's p: cached when computed from the `finished`
        trials counted with the row, else recomputed by one thread per study at a time (the
        others wait, then find what it stored)."""
        hit = cached(row, finished)
        if hit is not None:
            return hit, getattr(row, "answer_p", None) or {}
        with self._locks[row.id % LOCKS]:
            with transaction(self.engine, read_only=True) as conn:
                again = self._select_row(conn, row.id, None, p=True, finished=True)
                hit = cached(again, again.finished)
                if hit is not None:
                    return hit, again.answer_p or {}
                complete = load_trials(conn, row.optuna_study, states=("COMPLETE",))
            return self._compute(row, complete, again.finished)

    def _compute(
        self, row: sa.Row[Any], trials: Sequence[FrozenTrial], finished: int
    ) -> tuple[CachedAnswer, PValues]:
        """The answer of `trials` (loaded with, or after, the count of `finished` trials in
        the same transaction: never fewer than those), kept on the row if still the newest."""
        a = answer(trials, StudySpec.stored(row.spec))
        ans, p = CachedAnswer.of(a), {str(n): v for n, v in a.p.items()}
        if finished:
            answer_cache.store(self.engine, row.id, ans, p, finished)
        return ans, p


@functools.cache
def _row_statement(owned: bool, p: bool, finished: bool) -> sa.Select[Any]:
    """The study's row by `:id` (and `:owner`): built once per shape, not per read."""
    cols: list[Any] = [*ROW]
    if p:
        cols.append(studies.c.answer_p)
    if finished:
        cols.append(finished_of(studies.c.optuna_study).label("finished"))
    q = sa.select(*cols).where(studies.c.id == sa.bindparam("id"))
    return q.where(studies.c.owner == sa.bindparam("owner")) if owned else q


def _counts_of(conn: Connection, row: sa.Row[Any]) -> Counts:
    name = row.optuna_study
    return count_trials(conn, [name]).get(name, Counts()) if name else Counts()


def _best_out(row: Any, a: CachedAnswer) -> BestOut:
    spec = StudySpec.stored(row.spec)
    test = TestScore.model_validate(row.refit_result) if row.refit_result else None
    out = BestOut(
        study_id=row.id,
        metric=spec.cv.metric,
        direction=spec.cv.direction,
        complete=row.status in ENDED,
        status=row.status,
        test=test,
        stopped=row.reason if (row.reason or "").startswith(SETTLED) else None,
        **dict(a),  # the models themselves: nothing validated twice
    )
    if test is not None and (warning := baseline_warning(test, spec)) is not None:
        out.warnings = [*out.warnings, warning]
    if row.refit_state == RefitState.DONE and test is None and not spec.evaluation.has_unseen:
        out.warnings = [*out.warnings, unscored_model(row.id)]
    return out


def unscored_model(study_id: int) -> str:
    return (
        "no rows were held out, so the model to take home (droptune model "
        f"{study_id}) is refit on every row and has no test score; with --holdout 0.2 "
        "(evaluation.holdout) a study scores its model on rows the search never saw"
    )


def baseline_warning(test: TestScore, spec: StudySpec) -> str | None:
    """A warning when the network without dropout scored better on the unseen rows than the
    recommended rate: the search's answer did not carry over."""
    base = test.baseline
    if base is None:
        return None
    better = base.score > test.score if spec.cv.direction == "maximize" else base.score < test.score
    if not better:
        return None
    apart = base.ci95[0] > test.ci95[1] or base.ci95[1] < test.ci95[0]
    return (
        f"on the {test.n} unseen rows the network without dropout scored {base.score:.4g}, "
        f"better than the recommended rate {test.dropout:.3g} ({test.score:.4g}); "
        + (
            "their 95% intervals do not overlap: dropout hurts here"
            if apart
            else "within the intervals' noise, but dropout did not help on these rows"
        )
    )


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
        warning=u.get("warning"),
        p_vs_best=p_vs_best,
        started_at=t.datetime_start,
        ended_at=t.datetime_complete,
    )
