"""/workers and /healthz."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter

from droptune.service.deps import EngineDep, SettingsDep
from droptune.service.errors import problems
from droptune.storage import registry
from droptune.storage.db import transaction
from droptune.storage.schemas import WorkerOut

router = APIRouter(tags=["workers"])


@router.get("/workers", response_model=list[WorkerOut], responses=problems(422, 503))
def list_workers(
    engine: EngineDep, settings: SettingsDep, include_stopped: bool = False
) -> list[WorkerOut]:
    """Live and lost workers (a lost one stopped heartbeating); stopped ones on request."""
    return registry.list_workers(engine, settings.lease_grace_seconds, include_stopped)


@router.get("/healthz", tags=["health"], responses=problems(503))
def healthz(engine: EngineDep) -> dict[str, str]:
    with transaction(engine, read_only=True) as conn:
        conn.execute(sa.text("SELECT 1"))
    return {"status": "ok", "database": engine.dialect.name}
