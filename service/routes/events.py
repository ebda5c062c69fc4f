"""GET /studies/{id}/events: a study's progress as server-sent events.

Every stream of a study waits on the process's one `StudyWatcher` (storage/jobs/notify.py), which
checks all watched studies in one cheap query when PostgreSQL announces a change (every half
second on SQLite); only then is the study re-read, once for all its streams. An idle stream
costs a keep-alive comment every `ping_seconds`, nothing else.

Event ids come from the study's progress, so they mean the same after an API restart and on
every replica: 2 per finished trial + 1 per running one (a trial adds 1 when it starts and 1
when it ends) + the status (queued 0, running 1, ended 2) + the refit (ready or running 1, done
2). Every change a stream shows raises it, but for a refit starting (ready to running) or going
back (running to ready), which repeats the id: a stream sends it again with the new body. `end`
carries the last progress id + 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Request, Response
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from droptune.core.errors import NotFound, StorageError
from droptune.core.schemas import StudyOut
from droptune.core.states import ENDED, RefitState, StudyStatus
from droptune.service.deps import Caller, CallerDep, ReaderDep
from droptune.service.deps import revoked as caller_revoked
from droptune.service.errors import problems
from droptune.service.held import HeldSlots, Slot
from droptune.service.routes.studies import StudyId
from droptune.storage.jobs.notify import StudyWatcher
from droptune.storage.readmodel.reads import Reader

SHOWN = {"id", "status", "progress", "best"}  # a progress event's fields of StudyOut
STATUS_STEP: dict[str, int] = {StudyStatus.QUEUED: 0, StudyStatus.RUNNING: 1}  # an ended study: 2
# none or waiting: 0
REFIT_STEP: dict[str, int] = {RefitState.READY: 1, RefitState.RUNNING: 1, RefitState.DONE: 2}
SEND_TIMEOUT_S = 30.0  # a client that reads nothing for this long is dropped


class EventSettings(BaseSettings):
    """The streams' timings, from DROPTUNE_EVENTS_* variables."""

    model_config = SettingsConfigDict(env_prefix="DROPTUNE_EVENTS_", extra="ignore")

    # A comment this often keeps proxies and clients from timing out an idle stream.
    ping_seconds: float = Field(15.0, gt=0)
    retry_ms: int = Field(2000, ge=0)  # how long a client waits before it reconnects
    poll_seconds: float = Field(0.25, gt=0)  # SQLite: how often watched studies are checked
    # PostgreSQL: a check without a notification, for a change nobody announced.
    check_seconds: float = Field(5.0, gt=0)
    # How often a stream checks that its token has not been revoked since it opened.
    revalidate_seconds: float = Field(15.0, gt=0)


@contextlib.asynccontextmanager
async def _watching(app: FastAPI) -> AsyncIterator[None]:
    """The process's one watcher, over the app's engine; stopped with the app."""
    settings = EventSettings()
    watcher = StudyWatcher(
        app.state.engine,
        app.state.settings.database_url,
        poll_s=settings.poll_seconds,
        check_s=settings.check_seconds,
    )
    app.state.event_settings, app.state.watcher = settings, watcher
    try:
        yield
    finally:
        await watcher.close()


router = APIRouter(prefix="/studies", tags=["studies"], lifespan=_watching)

EXAMPLE = (
    "retry: 2000\n\n"
    'id: 7\nevent: progress\ndata: {"id":1,"status":"running","progress":{...},"best":{...}}\n\n'
    ": ping - 2025-01-01 12:00:15.000000+00:00\n\n"
    'id: 15\nevent: end\ndata: {"status": "succeeded"}\n\n'
)
REF = "#/components/schemas/"
# One event of the stream (before OpenAPI 3.2's `itemSchema`, a stream's `schema` describes each
# event): `data` is JSON, a `progress` event's or an `end` event's.
EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["progress", "end"]},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "retry": {"type": "integer", "minimum": 0, "description": "the first event only"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "anyOf": [
                    {
                        "title": "progress",
                        "type": "object",
                        "properties": {
                            "id": {"type": "integer"},
                            "status": {"enum": [s.value for s in StudyStatus]},
                            "progress": {"$ref": f"{REF}Progress"},
                            "best": {"anyOf": [{"$ref": f"{REF}BestOut"}, {"type": "null"}]},
                        },
                        "required": ["id", "status", "progress"],
                    },
                    {
                        "title": "end",
                        "type": "object",
                        "properties": {"status": {"enum": [s.value for s in ENDED]}},
                        "required": ["status"],
                        "additionalProperties": False,
                    },
                ]
            },
        },
    },
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "server-sent events: `progress` (the study's id, status, progress and "
        "best) at once and whenever the study changes, `end` (its status) when it ends, after "
        "which the stream closes; a `: ping` comment keeps an idle stream open",
        "content": {"text/event-stream": {"schema": EVENT, "example": EXAMPLE}},
    },
    204: {"description": "`Last-Event-ID` is past the `end` event: nothing more will come"},
    **problems(
        404,
        422,
        429,
        503,
        why={
            404: "no such study",
            429: "the owner already holds DROPTUNE_MAX_HELD_PER_OWNER event streams and waiting "
            "requests",
        },
    ),
}


def event_id(study: StudyOut) -> int:
    """The study's progress as one number that every change raises (see the module's doc)."""
    p = study.progress
    finished = p.complete + p.pruned + p.failed + p.interrupted
    status = STATUS_STEP.get(study.status, 2)
    return 2 * finished + p.running + status + REFIT_STEP.get(p.refit or "", 0)


def _parse_id(value: str | None) -> int | None:
    """A Last-Event-ID this API gave; anything else counts as none (the stream starts over)."""
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


@router.get("/{study_id}/events", response_class=EventSourceResponse, responses=RESPONSES)
async def events(
    study_id: StudyId,
    caller: CallerDep,
    reader: ReaderDep,
    request: Request,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", description="resume after this event: no event repeats"),
    ] = None,
) -> Response:
    """The study's progress as server-sent events, until it ends. A client that reconnects with
    `Last-Event-ID` gets only what came after that event (nothing until the next change, when
    nothing has changed since)."""
    status = await run_in_threadpool(reader.status, study_id, caller.scope)  # 404 before streaming
    last = _parse_id(last_event_id)
    if last is not None and status in ENDED:
        study = await run_in_threadpool(reader.study, study_id, caller.scope)
        if last > event_id(study):  # it had the `end` event (EventSource stops on a 204)
            return Response(status_code=204)
    settings: EventSettings = request.app.state.event_settings
    slots: HeldSlots = request.app.state.held
    slot = slots.acquire(caller.name)  # 429 past the owner's cap, before the stream starts
    stream = _stream(request.app.state.watcher, reader, study_id, caller, last, settings, slot)
    # A stream dropped before its first event never runs its `finally`: released when collected.
    weakref.finalize(stream, slot.release)
    return EventSourceResponse(stream, ping=settings.ping_seconds, send_timeout=SEND_TIMEOUT_S)


async def _stream(
    watcher: StudyWatcher,
    reader: Reader,
    study_id: int,
    caller: Caller,
    last: int | None,
    settings: EventSettings,
    slot: Slot,
) -> AsyncIterator[ServerSentEvent]:
    """`progress` whenever the study shows something the client has not had, `end` when it has
    ended. An outage ends the stream: the client reconnects and resumes from its last id. The
    caller's token (or dashboard session) is checked again every `revalidate_seconds`: a revoked
    one ends the stream."""
    with slot:  # the owner's place among held requests, given back however the stream ends
        async for event in _events(watcher, reader, study_id, caller, last, settings):
            yield event


async def _events(
    watcher: StudyWatcher,
    reader: Reader,
    study_id: int,
    caller: Caller,
    last: int | None,
    settings: EventSettings,
) -> AsyncIterator[ServerSentEvent]:
    """The events of `_stream`."""
    owner = caller.scope

    async def read() -> StudyOut:
        return await run_in_threadpool(reader.study, study_id, owner)

    async def revoked() -> bool:
        return await caller_revoked(reader.engine, caller)

    yield ServerSentEvent(retry=settings.retry_ms)  # first, so a resumed client learns it too
    sent = ""  # the last body sent on this connection
    async with watcher.watch(study_id) as watched:
        while True:
            version = watched.version  # before the read: a change during it is not missed
            try:  # one read per change, however many streams show this study
                study = await watched.shared(version, owner, read)
            except (StorageError, NotFound):
                return
            key = event_id(study)
            body = study.model_dump_json(include=SHOWN)
            # A higher id, or the same id showing something else (a refit given back).
            if last is None or key > last or (key == last and sent and body != sent):
                yield ServerSentEvent(body, event="progress", id=str(key))
                last, sent = key, body
            if study.status in ENDED:
                if last is None or last <= key:  # else it had this `end` (a race with the 204)
                    end = json.dumps({"status": study.status})
                    yield ServerSentEvent(end, event="end", id=str(key + 1))
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watched.wait(version), settings.revalidate_seconds)
            try:
                if await revoked():
                    return
            except StorageError:
                return
