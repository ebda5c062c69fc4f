"""A study's trials read straight from Optuna's tables, a page at a time: four statements,
whatever the number of trials (storage/readmodel/reads.py and the answer's recompute use it)."""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Connection

from droptune.storage.readmodel.answer_cache import o_attrs, o_params, o_studies, o_trials, o_values

# The user attributes a TrialOut or the answer reads (a trial has others: lease, ...).
ATTR_KEYS = (
    *("epochs", "train_seconds", "device", "worker", "attempt", "reason", "warning", "engine"),
    *("fold_scores", "score_mean", "score_std", "split_sizes"),
)


def load_trials(
    conn: Connection,
    name: str | None,
    *,
    states: Sequence[str] | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> list[FrozenTrial]:
    """The Optuna study `name`'s trials by number (those in `states`, `limit` from `offset`),
    with their params, value and the user attributes droptune reads: four statements, whatever
    the number of trials. Only what droptune shows is read (no intermediate values)."""
    t = o_trials.c
    of_study = sa.select(o_studies.c.study_id).where(o_studies.c.study_name == name)
    q = sa.select(t.trial_id, t.number, t.state, t.datetime_start, t.datetime_complete).where(
        t.study_id == of_study.scalar_subquery()
    )
    if states is not None:
        q = q.where(t.state.in_([TrialState[s] for s in states]))
    rows = conn.execute(q.order_by(t.number).offset(offset).limit(limit)).all()
    if not rows or name is None:
        return []
    if limit is not None:  # a page: its ids
        which: Any = [r.trial_id for r in rows]
    else:  # all of them: the same filter (a trial in `rows` is still in it: states are final)
        which = q.with_only_columns(t.trial_id)
    params: dict[int, dict[str, tuple[float, BaseDistribution]]] = {}
    for tid, key, value, dist in conn.execute(
        sa.select(o_params.c.trial_id, o_params.c.param_name, o_params.c.param_value)
        .add_columns(o_params.c.distribution_json)
        .where(o_params.c.trial_id.in_(which))
        .order_by(o_params.c.param_id)
    ):
        params.setdefault(tid, {})[key] = (value, _distribution(dist))
    values = {
        tid: _value(value, kind)
        for tid, value, kind in conn.execute(
            sa.select(o_values.c.trial_id, o_values.c.value, o_values.c.value_type).where(
                o_values.c.trial_id.in_(which), o_values.c.objective == 0
            )
        )
    }
    attrs: dict[int, dict[str, Any]] = {}
    for tid, key, value_json in conn.execute(
        sa.select(o_attrs.c.trial_id, o_attrs.c.key, o_attrs.c.value_json).where(
            o_attrs.c.trial_id.in_(which), o_attrs.c.key.in_(ATTR_KEYS)
        )
    ):
        attrs.setdefault(tid, {})[key] = json.loads(value_json)
    return [_frozen(r, params.get(r.trial_id, {}), values.get(r.trial_id), attrs) for r in rows]


def _value(value: float | None, kind: str) -> float | None:
    """The objective value as Optuna stores it: an infinity is its type with a NULL value."""
    return {"INF_POS": math.inf, "INF_NEG": -math.inf}.get(str(kind), value)


@functools.lru_cache(maxsize=256)
def _distribution(text: str) -> BaseDistribution:
    return json_to_distribution(text)


def _local(when: dt.datetime | None) -> dt.datetime | None:
    """Optuna stores naive UTC and shows naive local time (as its FrozenTrial does)."""
    if when is None:
        return None
    return when.replace(tzinfo=dt.UTC).astimezone().replace(tzinfo=None)


def _frozen(
    r: Any,  # a row of `trials`
    params: dict[str, tuple[float, BaseDistribution]],
    value: float | None,
    attrs: dict[int, dict[str, Any]],
) -> FrozenTrial:
    return FrozenTrial(
        number=r.number,
        state=r.state,
        value=value,
        datetime_start=_local(r.datetime_start),
        datetime_complete=_local(r.datetime_complete),
        params={k: d.to_external_repr(v) for k, (v, d) in params.items()},
        distributions={k: d for k, (_, d) in params.items()},
        user_attrs=attrs.get(r.trial_id, {}),
        system_attrs={},
        intermediate_values={},
        trial_id=r.trial_id,
    )
