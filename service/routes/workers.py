"""/workers and /healthz."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter

from droptune.core.schemas import ModelOut, WorkerOut
from droptune.service.deps import CallerDep, EngineDep, SettingsDep
from droptune.service.errors import problems
from droptune.storage.jobs import registry
from droptune.storage.sql.db import transaction
from droptune.storage.sql.tables import studies
from droptune.storage.submit import custom_models

router = APIRouter(tags=["workers"])


@router.get("/workers", response_model=list[WorkerOut], responses=problems(422, 503))
def list_workers(
    caller: CallerDep, engine: EngineDep, settings: SettingsDep, include_stopped: bool = False
) -> list[WorkerOut]:
    """Live and lost workers (a lost one stopped heartbeating); stopped ones on request. A
    worker busy with another owner's study shows no study or trials to a caller who is not
    an admin."""
    found = registry.list_workers(engine, settings.lease_grace_seconds, include_stopped)
    if caller.scope is None:
        return found
    busy = {w.study_id for w in found if w.study_id is not None}
    with transaction(engine, read_only=True) as conn:
        own = set(
            conn.execute(
                sa.select(studies.c.id).where(
                    studies.c.id.in_(busy), studies.c.owner == caller.scope
                )
            ).scalars()
        )
    return [
        w if w.study_id in own else w.model_copy(update={"study_id": None, "trials": []})
        for w in found
    ]


@router.get("/models", response_model=list[ModelOut], responses=problems(503))
def list_models(engine: EngineDep, settings: SettingsDep) -> list[ModelOut]:
    """The custom models (`model.kind: custom`) workers can build, with the workers that have
    each: installed on the workers (entry points `droptune.models`) or named in their
    DROPTUNE_MODELS; a spec may name any of them."""
    found = custom_models.advertised(engine, settings.lease_grace_seconds)
    return [
        ModelOut(name=name, workers=w["live"], recent_workers=w["recent"])
        for name, w in found.items()
    ]


@router.get("/healthz", tags=["health"], responses=problems(503))
def healthz(engine: EngineDep) -> dict[str, str]:
    with transaction(engine, read_only=True) as conn:
        conn.execute(sa.text("SELECT 1"))
    return {"status": "ok", "database": engine.dialect.name}
