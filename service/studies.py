"""/studies: submit, list, inspect, wait for the answer, cancel, follow progress."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from droptune.service.deps import EngineDep, Owner, ReaderDep, SettingsDep
from droptune.storage import queue
from droptune.storage.schemas import ENDED, BestOut, StudyOut, StudyPage, StudyStatus, TrialOut
from droptune.storage.spec import StudySpec

router = APIRouter(prefix="/studies", tags=["studies"])

DB_INT = 2**63 - 1  # the largest id or offset the databases take (BIGINT)
StudyId = Annotated[int, Path(ge=1, le=DB_INT, description="the study's id")]

POLL_S = 0.5  # how often a held request (`?wait=`, events) looks at the study again


@router.post("", status_code=201, response_model=StudyOut)
def submit(
    spec: StudySpec, owner: Owner, engine: EngineDep, reader: ReaderDep, response: Response
) -> StudyOut:
    study_id = queue.enqueue(engine, spec, owner)
    response.headers["Location"] = f"/studies/{study_id}"
    return reader.study(study_id, owner)


@router.get("", response_model=StudyPage)
def list_studies(
    owner: Owner,
    reader: ReaderDep,
    status: StudyStatus | None = None,
    offset: Annotated[int, Query(ge=0, le=DB_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> StudyPage:
    return reader.page(owner, status, offset, limit)


@router.get("/{study_id}", response_model=StudyOut)
def get_study(study_id: StudyId, owner: Owner, reader: ReaderDep) -> StudyOut:
    return reader.study(study_id, owner)


@router.get("/{study_id}/best", response_model=BestOut)
async def best(
    study_id: StudyId,
    owner: Owner,
    reader: ReaderDep,
    settings: SettingsDep,
    wait: Annotated[float, Query(ge=0, description="hold up to this many seconds")] = 0,
) -> BestOut:
    """The best rate so far; with `wait`, held until the study ends or the time passes."""
    deadline = time.monotonic() + min(wait, settings.max_wait_seconds)
    while time.monotonic() < deadline:
        if await run_in_threadpool(reader.status, study_id, owner) in ENDED:
            break
        await asyncio.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
    return await run_in_threadpool(reader.best, study_id, owner)


@router.get("/{study_id}/trials", response_model=list[TrialOut])
def trials(study_id: StudyId, owner: Owner, reader: ReaderDep) -> list[TrialOut]:
    return reader.trials(study_id, owner)


@router.post("/{study_id}/cancel", response_model=StudyOut)
def cancel(study_id: StudyId, owner: Owner, engine: EngineDep, reader: ReaderDep) -> StudyOut:
    queue.cancel(engine, study_id, owner)
    return reader.study(study_id, owner)


@router.get("/{study_id}/events")
async def events(study_id: StudyId, owner: Owner, reader: ReaderDep) -> StreamingResponse:
    """Server-sent events: a `progress` event whenever the study changes, `end` when it ends."""
    first = await run_in_threadpool(reader.study, study_id, owner)  # 404 before streaming

    async def stream() -> AsyncIterator[str]:
        last = ""
        study = first
        while True:
            body = study.model_dump_json(include={"id", "status", "progress", "best"})
            if body != last:
                yield f"event: progress\ndata: {body}\n\n"
                last = body
            if study.status in ENDED:
                yield f"event: end\ndata: {json.dumps({'status': study.status})}\n\n"
                return
            await asyncio.sleep(POLL_S * 2)
            study = await run_in_threadpool(reader.study, study_id, owner)

    return StreamingResponse(stream(), media_type="text/event-stream")
