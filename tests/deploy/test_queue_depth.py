"""KEDA's queue-depth queries (storage/jobs/depth.py) against a real PostgreSQL: the depth counts
exactly the trial slots and refits that workers then claim (test_k8s.py checks that the
ScaledObject carries the same text)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from droptune.core.spec.study import StudySpec
from droptune.storage.jobs import depth, queue, refits
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.sql.tables import studies
from droptune.storage.submit import submits

pytestmark = pytest.mark.postgres


def _spec(n: int, holdout: float | None = None) -> StudySpec:
    body: dict[str, Any] = {"dataset": {"builtin": "wine"}, "search": {"n_trials": n}}
    if holdout:
        body["evaluation"] = {"holdout": holdout}
    return StudySpec.model_validate(body)


def _scalar(pg_url: str, sql: str) -> int:
    """The query's one value, run as KEDA runs it: plain text on a libpq connection."""
    with psycopg.connect(pg_url.replace("+psycopg", "")) as conn:
        row = conn.execute(sql.encode()).fetchone()
    assert row is not None
    return int(row[0])


def _claim(engine: sa.Engine, study_id: int, n: int) -> queue.Claim:
    """Lease n slots of the study to a worker ("other") that keeps them."""
    c = queue.claim(engine, "other", n, study_id)
    assert c is not None and len(c.leases) == n
    return c


def _queue(engine: sa.Engine) -> tuple[int, int]:
    """Studies in every state a study can be in for a claim; (open slots, refits ready) the
    workers may still claim, counted by hand."""
    submits.enqueue(engine, _spec(5), "a")  # queued: 5
    _claim(engine, submits.enqueue(engine, _spec(4), "a"), 3)  # running, 3 leased: 1
    queue.cancel(engine, submits.enqueue(engine, _spec(3), "a"), None)  # cancelled: 0
    assert queue.fail_study(engine, submits.enqueue(engine, _spec(3), "a"), "test")  # failed: 0
    _claim(engine, submits.enqueue(engine, _spec(2), "a"), 2)  # every slot leased (cap): 0
    done = submits.enqueue(engine, _spec(1), "a")
    for lease in _claim(engine, done, 1).leases:
        assert queue.finish(engine, lease.id, queue.Outcome.DONE)
    taken = refits.claim(engine, "other")  # every study ends with its refit, then succeeds: 0
    assert taken is not None and taken.study_id == done
    assert refits.complete(engine, taken, "other", None, [])
    back = _claim(engine, submits.enqueue(engine, _spec(2), "a"), 2)
    assert queue.finish(engine, back.leases[0].id, queue.Outcome.FAILED, "test")  # 1 back
    refit = submits.enqueue(engine, _spec(2, holdout=0.2), "a")
    for lease in _claim(engine, refit, 2).leases:  # search over: its refit is ready
        assert queue.finish(engine, lease.id, queue.Outcome.DONE)
    assert refits.state(engine, refit) == "ready"
    custom = submits.enqueue(engine, _spec(4), "a")  # a custom model the workers lack: 0
    with transaction(engine) as conn:
        conn.execute(studies.update().where(studies.c.id == custom).values(custom_model="mine"))
    return 5 + 1 + 1, 1


def _claim_all(engine: sa.Engine, models: tuple[str, ...] = ()) -> tuple[int, int]:
    """Claim as workers do (a ready refit first, then slots) until nothing is left: (slots,
    refits) claimed, each claim by a worker of its own."""
    slots = taken_refits = 0
    for i in range(100):
        worker = f"w{i}"
        if refits.claim(engine, worker, models) is not None:
            taken_refits += 1
            continue
        c = queue.claim(engine, worker, 2, models=models)
        if c is None:
            return slots, taken_refits
        slots += len(c.leases)
    raise AssertionError("the queue never emptied")


def test_depth_counts_exactly_what_workers_claim(pg_url: str) -> None:
    engine = create_engine(pg_url)
    open_slots, ready = _queue(engine)
    assert _scalar(pg_url, depth.depth_sql()) == open_slots + ready
    assert _scalar(pg_url, depth.busy_sql()) == 1  # "other" holds leases
    assert _claim_all(engine) == (open_slots, ready)
    assert _scalar(pg_url, depth.depth_sql()) == 0
    # The custom-model study counts for workers that have the model, and they claim it.
    assert _scalar(pg_url, depth.depth_sql(["mine"])) == 4
    assert _claim_all(engine, ("mine",)) == (4, 0)
    assert _scalar(pg_url, depth.depth_sql(["mine"])) == 0


def test_busy_counts_workers_holding_leases(pg_url: str) -> None:
    engine = create_engine(pg_url)
    assert _scalar(pg_url, depth.busy_sql()) == 0
    submits.enqueue(engine, _spec(6), "a")
    held = [queue.claim(engine, w, 2) for w in ("w1", "w2", "w2")]
    assert all(held)
    assert _scalar(pg_url, depth.busy_sql()) == 2
    first = held[0]
    assert first is not None
    for lease in first.leases:
        assert queue.finish(engine, lease.id, queue.Outcome.DONE)
    assert _scalar(pg_url, depth.busy_sql()) == 1
