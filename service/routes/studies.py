"""/studies: submit, list, inspect, wait for the answer, cancel, delete, follow progress."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from droptune.core.errors import Forbidden
from droptune.core.schemas import BestOut, StudyOut, StudyPage, StudyStatus, TrialPage
from droptune.core.spec.study import StudySpec
from droptune.core.states import ENDED
from droptune.service.answers import matches, respond
from droptune.service.deps import CallerDep, EngineDep, ReaderDep, SettingsDep, revoked
from droptune.service.errors import problem, problems
from droptune.service.held import HeldSlots, hold
from droptune.storage.jobs import queue
from droptune.storage.jobs.lifecycle import delete_study
from droptune.storage.readmodel import versions
from droptune.storage.readmodel.reads import Reader
from droptune.storage.readmodel.versions import Versioned
from droptune.storage.submit import submits
from droptune.storage.submit.admission import MemoryLimit
from droptune.storage.submit.quotas import Quotas

router = APIRouter(prefix="/studies", tags=["studies"])

DB_INT = 2**63 - 1  # the largest id or offset the databases take (BIGINT)
StudyId = Annotated[int, Path(ge=1, le=DB_INT, description="the study's id")]

TRIALS_PAGE, MAX_TRIALS_PAGE = 100, 1000  # /trials: the default and the largest page
# The errors of a route on one study.
ONE_STUDY = problems(404, 422, 503, why={404: "no such study"})


@router.post(
    "",
    status_code=201,
    response_model=StudyOut,
    responses={
        200: {"description": "the study an earlier request with this Idempotency-Key made"},
        **problems(
            400,
            422,
            429,
            503,
            why={
                422: "an invalid spec, a data set it names is missing or does not fit, or an "
                "Idempotency-Key sent before with another body",
                429: "DROPTUNE_QUOTA_ACTIVE_STUDIES or DROPTUNE_QUOTA_TRIAL_EPOCHS: `detail` "
                "names the limit and your use",
            },
        ),
    },
)
def submit(
    spec: StudySpec,
    caller: CallerDep,
    engine: EngineDep,
    reader: ReaderDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            description="a fresh value per study (a UUID): the same key and body within a day "
            "answer the first study (200) instead of queueing another",
        ),
    ] = None,
) -> StudyOut:
    """Queue a study (201). Retried with the same Idempotency-Key, it answers the study the
    first request made (200): a submit whose answer was lost is never queued twice."""
    memory: MemoryLimit = request.app.state.memory
    done = submits.submit(
        engine,
        spec,
        caller.name,
        quotas=Quotas.of(settings),
        key=idempotency_key,
        memory=memory,
    )
    if not done.created:
        response.status_code = 200
    response.headers["Location"] = f"/studies/{done.study_id}"
    return reader.study(done.study_id, caller.name)


# The GET routes are `async def` around one `run_in_threadpool`: FastAPI runs a plain `def`
# route in the thread pool and then validates its answer there again, two hops per request.
@router.get(
    "",
    response_model=StudyPage,
    responses=problems(403, 422, 503, why={403: "owner= from a caller who is not an admin"}),
)
async def list_studies(
    caller: CallerDep,
    reader: ReaderDep,
    status: StudyStatus | None = None,
    offset: Annotated[int, Query(ge=0, le=DB_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    owner: Annotated[
        str | None, Query(max_length=200, description="admins: only this owner's studies")
    ] = None,
) -> StudyPage:
    """Your studies, newest first; an admin sees every owner's (`owner=` narrows it)."""
    if owner is not None and not caller.admin and owner != caller.name:
        raise Forbidden(f"only an admin may list another owner's studies (owner={owner!r})")
    if owner is not None and not owner.isprintable():
        # No owner has such a name (tokens refuse them); and a NUL reached PostgreSQL as a 500.
        return StudyPage(items=[], total=0, offset=offset, limit=limit)
    scope = owner if owner is not None else caller.scope
    return await run_in_threadpool(reader.page, scope, status, offset, limit)


def _versioned(
    request: Request, route: str, study_id: int, read: Callable[[], Versioned[Any]]
) -> Response:
    """The study's version read (404 first), then 304 or its kept bytes (service/answers.py)."""
    return respond(
        request.app.state.bodies, route, study_id, read, request.headers.get("if-none-match")
    )


@router.get("/{study_id}", response_model=StudyOut, responses=ONE_STUDY)
async def get_study(
    study_id: StudyId, caller: CallerDep, reader: ReaderDep, request: Request
) -> Response:
    # Its ETag changes with what it shows; If-None-Match naming it is a 304 (service/answers.py).
    # (Comments, not the docstring: the docstring is the OpenAPI document's, kept as it was.)
    read = functools.partial(versions.study, reader, study_id, caller.scope)
    return await run_in_threadpool(_versioned, request, "study", study_id, read)


@router.get(
    "/{study_id}/best",
    response_model=BestOut,
    responses=problems(
        401,
        404,
        422,
        429,
        503,
        why={
            401: "no token, one that is not valid, or with `wait`: one revoked while held",
            404: "no such study",
            429: "with `wait`: the owner already holds DROPTUNE_MAX_HELD_PER_OWNER waiting "
            "requests and event streams",
        },
    ),
)
async def best(
    study_id: StudyId,
    caller: CallerDep,
    reader: ReaderDep,
    settings: SettingsDep,
    request: Request,
    wait: Annotated[float, Query(ge=0, description="hold up to this many seconds")] = 0,
) -> Response:
    """The best rate so far; with `wait`, held until the study ends or the time passes (or the
    client goes: see service/held.py)."""
    # Its ETag changes with the answer; If-None-Match naming it is a 304, and with `wait` the
    # request is held until the version changes instead (service/answers.py, _held below).
    seconds = min(wait, settings.max_wait_seconds)
    read = functools.partial(versions.best, reader, study_id, caller.scope)
    if seconds > 0:
        slots: HeldSlots = request.app.state.held
        with slots.acquire(caller.name):
            if not await _held(request, reader, study_id, caller.scope, seconds, read):
                return Response(status_code=204)  # nobody is there to read it
        if await revoked(reader.engine, caller):  # while it was held: the answer is not theirs
            return problem(
                401, "Unauthorized", REVOKED_WHILE_HELD, headers={"WWW-Authenticate": "Bearer"}
            )
    return await run_in_threadpool(_versioned, request, "best", study_id, read)


REVOKED_WHILE_HELD = "the token (or dashboard session) was revoked while the request was held"


async def _held(
    request: Request,
    reader: Reader,
    study_id: int,
    owner: str | None,
    seconds: float,
    read: Callable[[], Versioned[Any]],
) -> bool:
    """Hold `?wait=` (service/held.py): until the study ends, or, with If-None-Match, until the
    answer's version is no longer the one named (the first read answers 404 too). False when
    the client has gone."""
    tag = request.headers.get("if-none-match")
    watcher = request.app.state.watcher
    if tag is not None:

        async def changed() -> bool:
            etag = (await run_in_threadpool(read)).etag
            return etag is None or not matches(tag, etag)

        return await hold(request, watcher, study_id, seconds, changed, recheck=True)

    async def ended() -> bool:
        return await run_in_threadpool(reader.status, study_id, owner) in ENDED

    return await ended() or await hold(request, watcher, study_id, seconds, ended)


@router.get("/{study_id}/trials", response_model=TrialPage, responses=ONE_STUDY)
async def trials(
    study_id: StudyId,
    caller: CallerDep,
    reader: ReaderDep,
    offset: Annotated[int, Query(ge=0, le=DB_INT, description="trials to skip, by number")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_TRIALS_PAGE)] = TRIALS_PAGE,
) -> TrialPage:
    """The study's trials by number, a page at a time (`{items, total, offset, limit}`, as
    GET /studies): `total` counts every trial, so a script knows how many pages remain."""
    return await run_in_threadpool(reader.trial_page, study_id, caller.scope, offset, limit)


@router.post(
    "/{study_id}/cancel",
    response_model=StudyOut,
    responses=problems(
        404, 409, 422, 503, why={404: "no such study", 409: "the study has already ended"}
    ),
)
def cancel(study_id: StudyId, caller: CallerDep, engine: EngineDep, reader: ReaderDep) -> StudyOut:
    by = "its owner" if caller.scope is not None else f"{caller.name} (an admin)"
    queue.cancel(engine, study_id, caller.scope, by=by)
    return reader.study(study_id, caller.scope)


@router.delete(
    "/{study_id}",
    status_code=204,
    response_class=Response,
    responses=problems(
        404,
        409,
        422,
        503,
        why={
            404: "no such study (or another owner's)",
            409: "the study is queued or running (cancel it first), or its workers are still "
            "stopping its trials (try again in a few seconds)",
        },
    ),
)
def delete(study_id: StudyId, caller: CallerDep, engine: EngineDep, request: Request) -> Response:
    """Delete an ended study: its trials (its Optuna study), stored models and answer. A queued
    or running study is refused (409): cancel it first, so no worker is still training it."""
    delete_study(engine, request.app.state.optuna, study_id, caller.scope)
    return Response(status_code=204)
