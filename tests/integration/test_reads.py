"""Reads that stay fast whatever the number of trials: a fixed number of SQL statements for a
study, its best, a page of its trials and a page of studies; the cached answer equals the one
computed from every trial, a stale one is recomputed, and an older writer never wins. On both
databases."""

from __future__ import annotations

import datetime as dt
import json
import random
import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from optuna.distributions import FloatDistribution, distribution_to_json
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState, create_trial

import droptune.client.api
from droptune.client import Client
from droptune.core.answer.rules import Answer, answer
from droptune.core.spec.study import StudySpec
from droptune.service.app import create_app
from droptune.service.settings import ServiceSettings
from droptune.storage.jobs.lifecycle import Why, is_interruption
from droptune.storage.optuna_bridge import ensure_study, optuna_storage
from droptune.storage.readmodel import answer_cache
from droptune.storage.readmodel.answer_cache import CachedAnswer
from droptune.storage.readmodel.reads import Reader
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.sql.tables import studies
from droptune.storage.submit import submits
from tests.integration.test_api import InProcess

SPEC = StudySpec.model_validate(
    {"dataset": {"builtin": "iris"}, "cv": {"folds": 5}, "search": {"n_trials": 2000}}
)
FOLDS = 5
FOLD_OFFSETS = (0.004, -0.003, 0.001, -0.002, 0.0)  # one per split: easier or harder folds


def scored_trial(rng: random.Random, state: TrialState = TrialState.COMPLETE) -> FrozenTrial:
    """A finished trial as a worker leaves it: a rate, fold scores and the attributes read.
    The scores follow a curve peaking at 0.35, with each fold's own offset (the splits are
    shared) and a little noise, so the paired test ties only rates near the peak."""
    rate = round(0.9 * rng.random(), 4)
    peak = 0.95 - 0.5 * (rate - 0.35) ** 2
    folds = [round(peak + off + rng.gauss(0, 0.002), 5) for off in FOLD_OFFSETS]
    attrs: dict[str, Any] = {
        "fold_scores": folds,
        "score_mean": statistics.fmean(folds),
        "score_std": statistics.stdev(folds),
        "split_sizes": [120.0, 30.0],
        "epochs": 10,
        "train_seconds": 0.5,
        "device": "cpu",
        "worker": "w-1",
        "attempt": 0,
        "lease": rng.randrange(10**6),
    }
    return create_trial(
        state=state,
        value=statistics.fmean(folds) if state == TrialState.COMPLETE else None,
        params={"dropout": rate},
        distributions={"dropout": FloatDistribution(0.0, 0.9)},
        user_attrs=attrs,
    )


def failed_trial(reason: str) -> FrozenTrial:
    return create_trial(
        state=TrialState.FAIL,
        params={"dropout": 0.5},
        distributions={"dropout": FloatDistribution(0.0, 0.9)},
        user_attrs={"reason": reason, "attempt": 1},
    )


def insert_trials(storage: RDBStorage, optuna_study_id: int, trials: Iterable[FrozenTrial]) -> None:
    """Insert finished trials straight into Optuna's tables, as Optuna would write them, in a
    few executemany statements: thousands in a second where `create_new_trial` takes minutes."""
    with storage.engine.begin() as conn:
        insert_rows(conn, optuna_study_id, list(trials))


def insert_rows(conn: sa.Connection, optuna_study_id: int, trials: list[FrozenTrial]) -> None:
    """`insert_trials` inside the caller's transaction (the bench fills many studies in one)."""
    t_trials, t_params, t_values, t_attrs = (
        models.BaseModel.metadata.tables[name]
        for name in ("trials", "trial_params", "trial_values", "trial_user_attributes")
    )
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    first = conn.execute(
        sa.select(sa.func.count()).where(t_trials.c.study_id == optuna_study_id)
    ).scalar_one()
    rows = [
        {
            "number": first + i,
            "study_id": optuna_study_id,
            "state": t.state,
            "datetime_start": now,
            "datetime_complete": now,
        }
        for i, t in enumerate(trials)
    ]
    ids = conn.execute(
        t_trials.insert().returning(t_trials.c.trial_id, sort_by_parameter_order=True), rows
    ).scalars()
    params, values, attrs = [], [], []
    finite = models.TrialValueModel.TrialValueType.FINITE
    for trial_id, t in zip(list(ids), trials, strict=True):
        for name, value in t.params.items():
            d = t.distributions[name]
            params.append(
                {
                    "trial_id": trial_id,
                    "param_name": name,
                    "param_value": d.to_internal_repr(value),
                    "distribution_json": distribution_to_json(d),
                }
            )
        if t.value is not None:
            values.append(
                {"trial_id": trial_id, "objective": 0, "value": t.value, "value_type": finite}
            )
        attrs += [
            {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
            for k, v in t.user_attrs.items()
        ]
    for table, batch in ((t_params, params), (t_values, values), (t_attrs, attrs)):
        if batch:
            conn.execute(table.insert(), batch)


@dataclass
class World:
    url: str
    engine: sa.Engine
    storage: RDBStorage  # Optuna's, for writing trials
    reader: Reader

    def study(self, owner: str, trials: list[FrozenTrial]) -> tuple[int, int]:
        """A running study of `owner` with these trials: (droptune id, Optuna study id)."""
        sid = submits.enqueue(self.engine, SPEC, owner)
        with transaction(self.engine) as conn:
            name = conn.execute(
                sa.select(studies.c.optuna_study).where(studies.c.id == sid)
            ).scalar_one()
            conn.execute(studies.update().where(studies.c.id == sid).values(status="running"))
        oid = ensure_study(self.storage, name, SPEC, sid)._study_id
        insert_trials(self.storage, oid, trials)
        return sid, oid

    def row(self, sid: int) -> sa.Row[Any]:
        with transaction(self.engine, read_only=True) as conn:
            return conn.execute(sa.select(studies).where(studies.c.id == sid)).one()

    def fresh(self, oid: int) -> Answer:
        """The answer computed as reads did before the cache: from every trial, via Optuna."""
        return answer(self.storage.get_all_trials(oid, deepcopy=False), SPEC)


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    engine = create_engine(db_url)
    storage = optuna_storage(db_url)
    read_storage = optuna_storage(db_url, writes=False)
    yield World(db_url, engine, storage, Reader(engine, read_storage))
    for e in (engine, storage.engine, read_storage.engine):
        e.dispose()


def statements(world: World, read: Callable[[], object]) -> int:
    """How many SQL statements `read` sends, over droptune's engine and Optuna's."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        seen.append(sql)

    engines = [world.engine, world.storage.engine]
    if world.reader.optuna is not None:
        engines.append(world.reader.optuna.engine)
    for e in engines:
        sa.event.listen(e, "before_cursor_execute", count)
    try:
        read()
    finally:
        for e in engines:
            sa.event.remove(e, "before_cursor_execute", count)
    return len(seen)


def reads(reader: Reader, owner: str, sid: int) -> dict[str, Callable[[], object]]:
    return {
        "study": lambda: reader.study(sid, owner),
        "best": lambda: reader.best(sid, owner),
        "trials": lambda: reader.trials(sid, owner, 0, 100),
        "page": lambda: reader.page(owner, None, 0, 50),
    }


def test_statements_do_not_grow_with_trials_or_studies(world: World) -> None:
    rng = random.Random(1)
    # "small": one study of 10 trials; "big": 50 studies of 10 and one of 1 000 (read below).
    small, _ = world.study("small", [scored_trial(rng) for _ in range(10)])
    for _ in range(49):
        world.study("big", [scored_trial(rng) for _ in range(10)])
    big, _ = world.study("big", [scored_trial(rng) for _ in range(1000)])

    def cold(owner: str, sid: int) -> int:
        return statements(world, lambda: world.reader.best(sid, owner))

    assert cold("small", small) == cold("big", big)  # recomputing loads trials in fixed SQL
    counts: dict[str, dict[str, int]] = {}
    for who, sid in (("small", small), ("big", big)):
        ops = reads(world.reader, who, sid)
        ops["page"]()  # the first page computes and keeps each study's answer
        counts[who] = {op: statements(world, read) for op, read in ops.items()}
    assert counts["small"] == counts["big"], counts
    assert counts["big"]["page"] <= 4 and counts["big"]["best"] <= 4, counts


def test_cached_answer_equals_the_one_from_every_trial(world: World) -> None:
    rng = random.Random(2)
    trials = [scored_trial(rng) for _ in range(40)]
    trials += [scored_trial(rng, TrialState.PRUNED) for _ in range(5)] + [failed_trial("error")]
    world.study("local", [scored_trial(rng) for _ in range(3)])  # another: never mixed in
    sid, oid = world.study("local", trials)
    world.study("local", [scored_trial(rng) for _ in range(7)])
    fresh = world.fresh(oid)
    assert fresh.best is not None and fresh.tied is not None

    best = world.reader.best(sid, "local")
    row = world.row(sid)
    assert row.answer_trials == 46
    assert CachedAnswer.model_validate(row.answer) == CachedAnswer.of(fresh)
    assert (best.trial, best.dropout, best.tied, best.recommended) == (
        fresh.best.number,
        fresh.best.params["dropout"],
        fresh.tied,
        fresh.recommended,
    )
    assert world.reader.best(sid, "local") == best  # now from the cache
    assert world.reader.study(sid, "local").best == best
    shown = {t.number: t.p_vs_best for t in world.reader.trials(sid, "local")}
    assert shown == {n: fresh.p.get(n) for n in range(len(trials))}
    # The dashboard's path computes the same answer and the same curve.
    _, curve, dash_best = world.reader.for_dashboard(sid)
    assert dash_best == best and {p.trial for p in curve.points} == set(range(45))


def test_a_stale_answer_is_recomputed(world: World) -> None:
    rng = random.Random(3)
    sid, oid = world.study("local", [scored_trial(rng) for _ in range(10)])
    before = world.reader.best(sid, "local")
    # A worker tells a better trial and dies before publishing: the cache says 10 trials.
    folds = [0.999] * FOLDS
    better = create_trial(
        value=0.999,
        params={"dropout": 0.42},
        distributions={"dropout": FloatDistribution(0.0, 0.9)},
        user_attrs={"fold_scores": folds, "score_mean": 0.999, "score_std": 0.0},
    )
    world.storage.create_new_trial(oid, template_trial=better)
    assert world.row(sid).answer_trials == 10
    after = world.reader.best(sid, "local")
    assert after != before and (after.trial, after.dropout) == (10, 0.42)
    assert world.row(sid).answer_trials == 11
    assert CachedAnswer.model_validate(world.row(sid).answer) == CachedAnswer.of(world.fresh(oid))


def test_an_older_writer_never_replaces_a_newer_answer(world: World) -> None:
    rng = random.Random(4)
    sid, oid = world.study("local", [scored_trial(rng) for _ in range(6)])
    newer = CachedAnswer.of(world.fresh(oid))
    older = CachedAnswer(dropout=0.1, trial=0)
    assert answer_cache.store(world.engine, sid, newer, {"0": 1.0}, 6)
    assert not answer_cache.store(world.engine, sid, older, {}, 5)  # computed from fewer
    assert not answer_cache.store(world.engine, sid, older, {}, 6)  # from as many: kept
    row = world.row(sid)
    assert (row.answer_trials, CachedAnswer.model_validate(row.answer)) == (6, newer)
    assert answer_cache.store(world.engine, sid, older, {}, 7)
    assert world.row(sid).answer_trials == 7


def test_progress_counts_interruptions_as_lifecycle_does(world: World) -> None:
    rng = random.Random(5)
    reasons = [
        Why.SHUTDOWN.value,
        Why.CANCELLED.value,
        "study failed",
        "Study failed",  # not "study ": a failure
        "error: boom",
        Why.LEASE_LOST.value,
    ]
    trials = [scored_trial(rng) for _ in range(3)] + [scored_trial(rng, TrialState.PRUNED)]
    trials += [failed_trial(r) for r in reasons]
    sid, oid = world.study("local", trials)
    world.storage.create_new_trial(oid)  # one still running
    # A COMPLETE trial that carries a shutdown reason (recovery wrote it, then the worker
    # told its score) is complete, not interrupted.
    done = scored_trial(rng)
    done.user_attrs["reason"] = Why.SHUTDOWN.value
    insert_trials(world.storage, oid, [done])
    p = world.reader.study(sid, "local").progress
    interrupted = sum(is_interruption(r) for r in reasons)
    assert interrupted == 3
    assert (p.complete, p.pruned, p.failed, p.interrupted, p.running) == (4, 1, 3, 3, 1)


def test_trials_come_in_pages(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(6)
    trials = [scored_trial(rng) for _ in range(8)] + [failed_trial(Why.CANCELLED.value)]
    trials.insert(3, scored_trial(rng, TrialState.PRUNED))
    sid, oid = world.study("local", trials)
    every = world.reader.trials(sid, "local")
    assert [t.number for t in every] == list(range(10))
    assert [t.state for t in every][3] == "PRUNED" and every[9].reason == Why.CANCELLED.value
    assert world.reader.trials(sid, "local", 4, 3) == every[4:7]
    assert world.reader.trials(sid, "local", 9, 100) == every[9:]
    assert world.reader.trials(sid, "local", 10, 100) == []
    # As Optuna shows them (its own loader is the reference).
    ref = {t.number: t for t in world.storage.get_all_trials(oid)}
    for t in every:
        r = ref[t.number]
        # Optuna shows naive local time; the API the same instant in UTC.
        times = [w and w.astimezone(dt.UTC) for w in (r.datetime_start, r.datetime_complete)]
        assert (t.params, t.value, [t.started_at, t.ended_at]) == (r.params, r.value, times)
        assert t.started_at is not None and t.started_at.tzinfo is dt.UTC
    app = create_app(ServiceSettings(database_url=world.url, dashboard=False))
    with TestClient(app, base_url="http://localhost") as api:
        assert api.get(f"/studies/{sid}/trials", params={"limit": 1001}).status_code == 422
        r = api.get(f"/studies/{sid}/trials", params={"offset": 2, "limit": 5})
        page = r.json()
        assert [t["number"] for t in page["items"]] == [2, 3, 4, 5, 6]
        assert (page["total"], page["offset"], page["limit"]) == (10, 2, 5)
        whole = api.get(f"/studies/{sid}/trials").json()
        assert (len(whole["items"]), whole["total"], whole["limit"]) == (10, 10, 100)
        past = api.get(f"/studies/{sid}/trials", params={"offset": 10}).json()
        assert (past["items"], past["total"]) == ([], 10)
        monkeypatch.setattr(droptune.client.api, "TRIALS_PAGE", 4)
        with Client("http://localhost", transport=InProcess(api)) as c:
            assert [t.number for t in c.trials(sid)] == list(range(10))  # three pages
            assert [t.number for t in c.trials(sid, offset=5, limit=2)] == [5, 6]
