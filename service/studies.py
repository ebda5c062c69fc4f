"""/studies: submit, list, inspect, wait for the answer, cancel, follow progress."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from droptune.service.deps import EngineDep, Owner, ReaderDep, SettingsDep
from droptune.service.errors import problems
from droptune.storage import queue
from droptune.storage.schemas import ENDED, BestOut, StudyOut, StudyPage, StudyStatus, TrialOut
from droptune.storage.spec import StudySpec

router = APIRouter(prefix="/studies", tags=["studies"])

DB_INT = 2**63 - 1  # the largest id or offset the databases take (BIGINT)
StudyId = Annotated[int, Path(ge=1, le=DB_INT, description="the study's id")]

POLL_S = 0.5  # how often a held request (`?wait=`) looks at the study again
TRIALS_PAGE, MAX_TRIALS_PAGE = 100, 1000  # /trials: the default and the largest page
# The errors of a route on one study.
ONE_STUDY = problems(404, 422, 503, why={404: "no such study"})


@router.post(
    "",
    status_code=201,
    response_model=StudyOut,
    responses=problems(
        400,
        422,
        503,
        why={422: "an invalid spec, or a data set it names is missing or does not fit"},
    ),
)
def submit(
    spec: StudySpec, owner: Owner, engine: EngineDep, reader: ReaderDep, response: Response
) -> StudyOut:
    study_id = queue.enqueue(engine, spec, owner)
    response.headers["Location"] = f"/studies/{study_id}"
    return reader.study(study_id, owner)


# The GET routes are `async def` around one `run_in_threadpool`: FastAPI runs a plain `def`
# route in the thread pool and then validates its answer there again, two hops per request.
@router.get("", response_model=StudyPage, responses=problems(422, 503))
async def list_studies(
    owner: Owner,
    reader: ReaderDep,
    status: StudyStatus | None = None,
    offset: Annotated[int, Query(ge=0, le=DB_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> StudyPage:
    return await run_in_threadpool(reader.page, owner, status, offset, limit)


@router.get("/{study_id}", response_model=StudyOut, responses=ONE_STUDY)
async def get_study(study_id: StudyId, owner: Owner, reader: ReaderDep) -> StudyOut:
    return await run_in_threadpool(reader.study, study_id, owner)


@router.get("/{study_id}/best", response_model=BestOut, responses=ONE_STUDY)
async def best(
    study_id: StudyId,
    owner: Owner,
    reader: ReaderDep,
    settings: SettingsDep,
    wait: Annotated[float, Query(ge=0, description="hold up to this many seconds")] = 0,
) -> BestOut:
    """The best rate so far; with `wait`, held until the study ends or the time passes."""
    deadline = time.monotonic() + min(wait, settings.max_wait_seconds)
    pause = random.uniform(0, POLL_S)  # a phase of its own: held requests never look at once
    while time.monotonic() < deadline:
        if await run_in_threadpool(reader.status, study_id, owner) in ENDED:
            break
        await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = POLL_S
    return await run_in_threadpool(reader.best, study_id, owner)


@router.get("/{study_id}/trials", response_model=list[TrialOut], responses=ONE_STUDY)
async def trials(
    study_id: StudyId,
    owner: Owner,
    reader: ReaderDep,
    offset: Annotated[int, Query(ge=0, le=DB_INT, description="trials to skip, by number")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_TRIALS_PAGE)] = TRIALS_PAGE,
) -> list[TrialOut]:
    """The study's trials by number, a page at a time: a page shorter than `limit` is the last."""
    return await run_in_threadpool(reader.trials, study_id, owner, offset, limit)


@router.post(
    "/{study_id}/cancel",
    response_model=StudyOut,
    responses=problems(
        404, 409, 422, 503, why={404: "no such study", 409: "the study has already ended"}
    ),
)
def cancel(study_id: StudyId, owner: Owner, engine: EngineDep, reader: ReaderDep) -> StudyOut:
    queue.cancel(engine, study_id, owner)
    return reader.study(study_id, owner)
