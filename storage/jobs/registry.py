"""The worker registry: who runs, on which device, holding which trials, alive or lost."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from droptune.core.schemas import WorkerOut
from droptune.core.states import WorkerStatus
from droptune.storage.jobs.queue import Beat, heartbeat_leases
from droptune.storage.sql.db import db_now, transaction
from droptune.storage.sql.tables import studies, workers


def register(
    engine: Engine,
    worker_id: str,
    host: str,
    pid: int,
    device: str,
    memory_bytes: int | None = None,
    models: list[str] | None = None,
) -> None:
    """Add a live worker; `memory_bytes` is what one batch of it may use (the submit refuses a
    study no live worker has the memory for: storage.admission), `models` the custom models it
    loaded (storage.custom_models)."""
    with transaction(engine) as conn:
        conn.execute(
            workers.insert().values(
                id=worker_id,
                host=host,
                pid=pid,
                device=device,
                status=WorkerStatus.LIVE,
                memory_bytes=memory_bytes,
                models=models or [],
            )
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
            .values(
                heartbeat_at=db_now(), study_id=study_id, trials=trials, status=WorkerStatus.LIVE
            )
        )
        return heartbeat_leases(conn, worker_id, lease_ids)


def stopped(engine: Engine, worker_id: str) -> None:
    with transaction(engine) as conn:
        conn.execute(
            workers.update()
            .where(workers.c.id == worker_id)
            .values(status=WorkerStatus.STOPPED, heartbeat_at=db_now(), study_id=None, trials=[])
        )


def list_workers(
    engine: Engine, grace_seconds: float, include_stopped: bool, owner: str | None = None
) -> list[WorkerOut]:
    """Live and lost workers (stopped ones on request). With `owner` (a caller who is not an
    admin), a worker busy with another owner's study shows no study or trials."""
    w = workers.c
    status = sa.case(
        (w.status == WorkerStatus.STOPPED, WorkerStatus.STOPPED),
        (w.heartbeat_at < db_now(-grace_seconds), WorkerStatus.LOST),
        else_=WorkerStatus.LIVE,
    ).label("derived")
    query = sa.select(workers, status).order_by(w.started_at.desc())
    if not include_stopped:
        query = query.where(w.status != WorkerStatus.STOPPED)
    with transaction(engine, read_only=True) as conn:
        rows = conn.execute(query).all()
        busy = {r.study_id for r in rows if r.study_id is not None}
        own = busy
        if owner is not None and busy:
            mine = sa.select(studies.c.id).where(studies.c.id.in_(busy), studies.c.owner == owner)
            own = set(conn.execute(mine).scalars())
    out = []
    for r in rows:
        m: dict[str, Any] = dict(r._mapping)
        m["status"] = m.pop("derived")
        m["trials"] = m["trials"] or []
        m["models"] = m["models"] or []
        if m["study_id"] is not None and m["study_id"] not in own:
            m["study_id"], m["trials"] = None, []
        out.append(WorkerOut.model_validate(m))
    return out


def _live(grace_seconds: float) -> list[sa.ColumnElement[bool]]:
    """A worker is live when it has not stopped and its heartbeat is within the grace."""
    return [workers.c.status == WorkerStatus.LIVE, workers.c.heartbeat_at >= db_now(-grace_seconds)]


def largest_live_memory(conn_or_engine: Connection | Engine, grace_seconds: float) -> int | None:
    """The most memory a live worker advertises for a batch, in bytes; None when no live worker
    advertises any."""
    query = sa.select(sa.func.max(workers.c.memory_bytes)).where(*_live(grace_seconds))
    if isinstance(conn_or_engine, Engine):
        with transaction(conn_or_engine, read_only=True) as conn:
            found = conn.execute(query).scalar_one_or_none()
    else:
        found = conn_or_engine.execute(query).scalar_one_or_none()
    return None if found is None else int(found)


def count_live(engine: Engine, grace_seconds: float) -> int:
    with transaction(engine, read_only=True) as conn:
        n = conn.execute(
            sa.select(sa.func.count()).select_from(workers).where(*_live(grace_seconds))
        ).scalar_one()
    return int(n)
