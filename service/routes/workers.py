"""/workers and /healthz."""

from __future__ import annotations

from fastapi import APIRouter

from droptune.core.schemas import ModelOut, WorkerOut
from droptune.service.deps import CallerDep, EngineDep, SettingsDep
from droptune.service.errors import problems
from droptune.storage.jobs import registry
from droptune.storage.sql.db import ping
from droptune.storage.submit import custom_models

router = APIRouter(tags=["workers"])


@router.get("/workers", response_model=list[WorkerOut], responses=problems(422, 503))
def list_workers(
    caller: CallerDep, engine: EngineDep, settings: SettingsDep, include_stopped: bool = False
) -> list[WorkerOut]:
    """Live and lost workers (a lost one stopped heartbeating); stopped ones on request. A
    worker busy with another owner's study shows no study or trials to a caller who is not
    an admin."""
    return registry.list_workers(
        engine, settings.lease_grace_seconds, include_stopped, owner=caller.scope
    )


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
    return {"status": "ok", "database": ping(engine)}
