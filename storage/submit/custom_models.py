"""Which registered (custom) models the workers can build: what each advertised at start.

A worker loads its factories (worker/run/plugins.py: entry points `droptune.models`,
DROPTUNE_MODELS) and stores their names on its row of droptune_workers; the API reads them here
to refuse a study naming a model no worker has, and to answer GET /models. A worker only claims
studies whose model it has (queue.runnable).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from droptune.core.errors import Invalid
from droptune.core.states import WorkerStatus
from droptune.storage.sql.db import db_now, transaction
from droptune.storage.sql.tables import workers

# A worker that advertised a model within this long still counts for a submit: a queued study
# waits for it to come back (restarts, a night without GPUs), while a model nobody has run for a
# week is more likely a typo.
REMEMBER_SECONDS = 7 * 24 * 3600


def _rows(conn: Connection, within_seconds: float) -> list[Any]:
    w = workers.c
    return list(
        conn.execute(
            sa.select(w.id, w.models, w.status, w.heartbeat_at).where(
                w.models.is_not(None), w.heartbeat_at >= db_now(-within_seconds)
            )
        ).all()
    )


def check_advertised(conn: Connection, name: str) -> None:
    """422 naming model.name unless a worker seen within REMEMBER_SECONDS advertised `name`."""
    known = sorted({m for r in _rows(conn, REMEMBER_SECONDS) for m in (r.models or [])})
    if name in known:
        return
    have = ", ".join(known) if known else "none (start a worker with the model installed)"
    raise Invalid(
        f"model.name: no worker has the model {name!r}; the workers have: {have} (GET /models)",
        field="model.name",
    )


def advertised(engine: Engine, grace_seconds: float) -> dict[str, dict[str, list[str]]]:
    """Each model name -> {"live": worker ids alive now, "recent": others seen this week}."""
    live_since = db_now(-grace_seconds)
    w = workers.c
    with transaction(engine, read_only=True) as conn:
        rows = _rows(conn, REMEMBER_SECONDS)
        alive = set(
            conn.execute(
                sa.select(w.id).where(w.status == WorkerStatus.LIVE, w.heartbeat_at >= live_since)
            ).scalars()
        )
    out: dict[str, dict[str, list[str]]] = {}
    for r in rows:
        for name in r.models or []:
            entry = out.setdefault(name, {"live": [], "recent": []})
            entry["live" if r.id in alive else "recent"].append(r.id)
    return dict(sorted(out.items()))
