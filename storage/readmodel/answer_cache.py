"""What a read needs without loading every trial: progress counted in SQL over Optuna's tables,
and the answer kept on the study's row.

Counting is one aggregate over the study's rows of Optuna's `trials` (by its `study_id` index),
not counters kept beside it: trials end in places no lease passes through (recovery failing an
orphan, a worker failing a trial it could not link, Optuna's own tools), so a counter would
drift, while the aggregate is the truth by construction and costs one statement.

The answer depends only on the study's finished trials, and a trial finishes once, with its
scores written before its state: so the number of finished trials (COMPLETE + PRUNED + FAIL)
names the set an answer was computed from. `answer_trials` stores that number beside the
answer; a read whose count matches uses the cache, any other recomputes once and stores. A
writer replaces the cache only with an answer from more finished trials (compare-and-set), so a
slow writer holding an older answer can never overwrite a newer one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from optuna.trial import TrialState
from pydantic import BaseModel
from sqlalchemy.engine import Connection, Engine

from droptune.core.answer.rates import primary_rate
from droptune.core.answer.rules import Answer, score_of
from droptune.core.errors import StorageError
from droptune.core.schemas import Recommended, Score, Tied
from droptune.storage.jobs.lifecycle import INTERRUPTIONS
from droptune.storage.sql.db import transaction
from droptune.storage.sql.tables import studies

log = logging.getLogger("droptune.reads")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # final states

# Optuna's own tables (Optuna creates and migrates them; never part of droptune's migrations):
# only the columns reads use.
OPTUNA = sa.MetaData()
o_studies = sa.Table(
    "studies",
    OPTUNA,
    sa.Column("study_id", sa.Integer, primary_key=True),
    sa.Column("study_name", sa.String),
)
o_trials = sa.Table(
    "trials",
    OPTUNA,
    sa.Column("trial_id", sa.Integer, primary_key=True),
    sa.Column("number", sa.Integer),
    sa.Column("study_id", sa.Integer),
    # As Optuna declares it: a native enum on PostgreSQL, which refuses a VARCHAR to compare.
    sa.Column("state", sa.Enum(TrialState)),
    sa.Column("datetime_start", sa.DateTime),
    sa.Column("datetime_complete", sa.DateTime),
)
o_params = sa.Table(
    "trial_params",
    OPTUNA,
    sa.Column("param_id", sa.Integer, primary_key=True),
    sa.Column("trial_id", sa.Integer),
    sa.Column("param_name", sa.String),
    sa.Column("param_value", sa.Float),
    sa.Column("distribution_json", sa.Text),
)
o_values = sa.Table(
    "trial_values",
    OPTUNA,
    sa.Column("trial_value_id", sa.Integer, primary_key=True),
    sa.Column("trial_id", sa.Integer),
    sa.Column("objective", sa.Integer),
    sa.Column("value", sa.Float),
    sa.Column("value_type", sa.String),  # FINITE, INF_POS, INF_NEG
)
o_attrs = sa.Table(
    "trial_user_attributes",
    OPTUNA,
    sa.Column("trial_user_attribute_id", sa.Integer, primary_key=True),
    sa.Column("trial_id", sa.Integer),
    sa.Column("key", sa.String),
    sa.Column("value_json", sa.Text),  # json.dumps(value), as Optuna writes it
)


@dataclass(frozen=True)
class Counts:
    """A study's trials by state; `interrupted` FAIL trials are also counted in `fail`."""

    complete: int = 0
    pruned: int = 0
    fail: int = 0
    interrupted: int = 0
    running: int = 0
    total: int = 0

    @property
    def finished(self) -> int:
        """The trials an answer is computed from: they never change again."""
        return self.complete + self.pruned + self.fail


def _interrupted(trial_id: Any) -> sa.ColumnElement[bool]:
    """Whether the FAIL trial `trial_id` was stopped from outside: the SQL twin of
    `lifecycle.is_interruption` over the JSON text of its `reason` attribute."""
    a = o_attrs.c
    return sa.exists().where(
        a.trial_id == trial_id,
        a.key == "reason",
        sa.or_(
            a.value_json.in_([json.dumps(r) for r in INTERRUPTIONS]),
            # substr, not LIKE: SQLite's LIKE ignores case, is_interruption does not
            sa.func.substr(a.value_json, 1, 7) == json.dumps("study ")[:-1],
        ),
    )


def _count_statement() -> sa.Select[Any]:
    """Per study: its trials in each state, all of them, and the interrupted FAIL ones; one
    row per study (sums rather than GROUP BY state: no sort, a third cheaper on SQLite)."""
    t = o_trials.c

    def n(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
        return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

    states = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING]
    return (
        sa.select(
            o_studies.c.study_name,
            *(n(t.state == s) for s in states),
            n(sa.and_(t.state == TrialState.FAIL, _interrupted(t.trial_id))),
            sa.func.count(),
        )
        .select_from(o_studies.join(o_trials, o_trials.c.study_id == o_studies.c.study_id))
        .where(o_studies.c.study_name.in_(sa.bindparam("names", expanding=True)))
        .group_by(o_studies.c.study_name)
    )


COUNT = _count_statement()  # built once: a read runs it, never rebuilds it


def count_trials(conn: Connection, names: Sequence[str]) -> dict[str, Counts]:
    """The trials of each Optuna study in `names`, by state, in one aggregate; a study with
    no trial (or not created yet) is absent."""
    if not names:
        return {}
    rows = conn.execute(COUNT, {"names": list(names)})
    return {
        name: Counts(
            complete=int(c), pruned=int(p), fail=int(f), running=int(r), interrupted=int(i), total=n
        )
        for name, c, p, f, r, i, n in rows
    }


def finished_of(name: Any) -> sa.ScalarSelect[int]:
    """How many trials of the Optuna study named `name` (a column) have finished: cheaper than
    `COUNT` (no grouping, no attributes), for a read that only checks its cached answer."""
    t = o_trials.c
    study = sa.select(o_studies.c.study_id).where(o_studies.c.study_name == name)
    study = study.correlate_except(o_studies)  # `name` is the outer row's, not a join
    return (
        sa.select(sa.func.count())
        .where(t.study_id == study.scalar_subquery(), t.state.in_(FINISHED))
        .scalar_subquery()
    )


class CachedAnswer(BaseModel):
    """BestOut's part that depends on the trials (the rest comes from the study's row)."""

    dropout: float | None = None
    params: dict[str, float] = {}
    score: Score | None = None
    trial: int | None = None
    one_se_dropout: float | None = None
    one_se_trial: int | None = None
    recommended: Recommended | None = None
    tied: Tied | None = None
    warnings: list[str] = []
    engine: str | None = None

    @classmethod
    def of(cls, a: Answer) -> CachedAnswer:
        best, one_se = a.best, a.one_se
        return cls(
            dropout=primary_rate(best.params) if best else None,
            params={k: float(v) for k, v in best.params.items()} if best else {},
            score=score_of(best) if best else None,
            trial=best.number if best else None,
            one_se_dropout=primary_rate(one_se.params) if one_se else None,
            one_se_trial=one_se.number if one_se else None,
            recommended=a.recommended,
            tied=a.tied,
            warnings=a.warnings,
            engine=a.engine,
        )


EMPTY = CachedAnswer()  # the answer of a study with no finished trial


def cached(row: Any, finished: int) -> CachedAnswer | None:
    """The row's cached answer when it was computed from the study's `finished` trials."""
    if finished == 0:
        return EMPTY
    if row.answer is None or row.answer_trials != finished:
        return None
    return CachedAnswer.model_validate(row.answer)


# Each COMPLETE trial's p_vs_best, keyed by its number as text, as JSON keeps it: a page of
# trials looks up its own numbers, never converts every key.
PValues = dict[str, float | None]


def store(
    engine: Engine,
    study_id: int,
    answer: CachedAnswer,
    p: PValues,
    finished: int,
) -> bool:
    """Keep the answer computed from `finished` finished trials, unless the row already holds
    one from as many or more (compare-and-set). False when refused or when the database could
    not take the write: the caller has its answer either way, and the next read stores it."""
    s = studies.c
    try:
        with transaction(engine) as conn:
            n = conn.execute(
                studies.update()
                .where(
                    s.id == study_id,
                    sa.or_(s.answer_trials.is_(None), s.answer_trials < finished),
                )
                .values(
                    answer=answer.model_dump(mode="json"),
                    answer_p=p,
                    answer_trials=finished,
                )
            ).rowcount
    except StorageError as exc:
        log.warning("study %s: could not keep its answer (%s)", study_id, exc)
        return False
    return n == 1
