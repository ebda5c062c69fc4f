"""The worker registry: who runs, on which device, holding which trials, alive or lost."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from droptune.storage.db import db_now, transaction
from droptune.storage.queue import Beat, heartbeat_leases
from droptune.storage.schemas import WorkerOut
from droptune.storage.tables import workers


def register(engine: Engine, worker_id: str, host: str, pid: int, device: str) -> None:
    with transaction(engine) as conn:
        conn.execute(
            workers.insert().values(id=worker_id, host=host, pid=pid, device=device, status="live")
        )


def heartbeat(
    engine: Engine,
    worker_id: str,
    study_id: int | None,
    trials: list[int],
    lease_ids: Iterable[int] = (),
) -> Beat:
    """Renew the worker's row and the leases it works on, in one transaction."""
    with transaction(engine) as conn:
        conn.execute(
            workers.update()
            .where(workers.c.id == worker_id)
            .values(heartbeat_at=db_now(), study_id=study_id, trials=trials, status="live")
        )
        return heartbeat_leases(conn, worker_id, lease_ids)


def stopped(engine: Engine, worker_id: str) -> None:
    with transaction(engine) as conn:
        conn.execute(
            workers.update()
            .where(workers.c.id == worker_id)
            .values(status="stopped", heartbeat_at=db_now(), study_id=None, trials=[])
        )


def list_workers(engine: Engine, grace_seconds: float, include_stopped: bool) -> list[WorkerOut]:
    w = workers.c
    status = sa.case(
        (w.status == "stopped", "stopped"),
        (w.heartbeat_at < db_now(-grace_seconds), "lost"),
        else_="live",
    ).label("derived")
    query = sa.select(workers, status).order_by(w.started_at.desc())
    if not include_stopped:
        query = query.where(w.status != "stopped")
    with transaction(engine, read_only=True) as conn:
        rows = conn.execute(query).all()
    out = []
    for r in rows:
        m: dict[str, Any] = dict(r._mapping)
        m["status"] = m.pop("derived")
        m["trials"] = m["trials"] or []
        out.append(WorkerOut.model_validate(m))
    return out


def count_live(engine: Engine, grace_seconds: float) -> int:
    w = workers.c
    with transaction(engine, read_only=True) as conn:
        n = conn.execute(
            sa.select(sa.func.count())
            .select_from(workers)
            .where(w.status == "live", w.heartbeat_at >= db_now(-grace_seconds))
        ).scalar_one()
    return int(n)
