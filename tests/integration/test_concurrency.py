"""Many processes claiming from one study never claim the same slot; the counts add up."""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from typing import Any

import pytest
import sqlalchemy as sa

from droptune.core.spec.study import StudySpec
from droptune.storage.jobs import queue
from droptune.storage.jobs.queue import Outcome
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.sql.tables import leases, studies
from droptune.storage.submit import submits
from tests.queueing import refit_done

pytestmark = pytest.mark.postgres

N_TRIALS = 240
N_PROCS = 8


def _claimer(url: str, name: str, barrier: Any, out: Any) -> None:
    engine = create_engine(url)
    rng = random.Random(name)
    got: list[int] = []
    barrier.wait()
    # As a worker does: SKIP LOCKED passes over a study another claim is holding for a moment,
    # so "nothing claimed" means "done" only once nothing is open either.
    while queue.peek(engine) is not None:
        claim = queue.claim(engine, name, rng.randint(1, 4))
        if claim is None:
            continue
        for lease in claim.leases:
            got.append(lease.id)
            time.sleep(0.005)  # a little work, so every process gets its turn
            queue.finish(engine, lease.id, Outcome.DONE)
    out.put((name, got))
    engine.dispose()


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_parallel_claims_never_overlap(backend: str, request: pytest.FixtureRequest) -> None:
    url = str(request.getfixturevalue("pg_url" if backend == "postgres" else "sqlite_url"))
    engine = create_engine(url)
    spec = StudySpec.model_validate(
        {"dataset": {"builtin": "iris"}, "search": {"n_trials": N_TRIALS}}
    )
    sid = submits.enqueue(engine, spec, "a")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(N_PROCS)
    out: Any = ctx.Queue()
    procs = [
        ctx.Process(target=_claimer, args=(url, f"w{i}", barrier, out)) for i in range(N_PROCS)
    ]
    for p in procs:
        p.start()
    results: dict[str, list[int]] = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    claimed = [lease for got in results.values() for lease in got]
    assert len(claimed) == N_TRIALS and len(set(claimed)) == N_TRIALS
    assert sum(1 for got in results.values() if got) >= 2  # the work really was shared
    refit_done(engine, sid)
    with transaction(engine) as conn:
        row = conn.execute(sa.select(studies).where(studies.c.id == sid)).one()
        left = conn.execute(sa.select(sa.func.count()).select_from(leases)).scalar_one()
    assert (row.status, row.n_done, row.slots_claimed, left) == ("succeeded", N_TRIALS, N_TRIALS, 0)
