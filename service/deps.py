"""Dependencies: the caller, the database, the reader — one place each.

Async: a plain `def` dependency costs a thread-pool hop per request (they only read app state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from droptune.service.settings import ServiceSettings
from droptune.storage.access import sessions, tokens
from droptune.storage.readmodel.reads import Reader

LOCAL_OWNER = "local"


@dataclass(frozen=True)
class Caller:
    """Who sent the request (service/middleware/auth.py sets it): `name` owns what they create; an
    admin
    sees and acts on every owner's studies and data sets. In open mode (no token was ever
    created, loopback bind) every caller is the admin `local`."""

    name: str
    admin: bool
    # The bearer token it came with (None in open mode, or from a session cookie): an event
    # stream checks it again while it runs, so a revoked token ends it.
    token: str | None = field(default=None, repr=False, compare=False)
    # The dashboard session it came with instead (service/middleware/sessions.py), checked the same
    # way.
    session: str | None = field(default=None, repr=False, compare=False)

    @property
    def scope(self) -> str | None:
        """The owner whose rows a read or action may touch: None (any owner) for an admin."""
        return None if self.admin else self.name


async def revoked(engine: Engine, caller: Caller) -> bool:
    """Whether the token or dashboard session the caller came with has ended since (a held
    request or an event stream checks before it answers; False in open mode)."""
    if caller.session is not None:
        who = await run_in_threadpool(sessions.identify, engine, caller.session)
    elif caller.token is not None:
        who = await run_in_threadpool(tokens.identify, engine, caller.token)
    else:
        return False
    return who is None


OPEN = Caller(LOCAL_OWNER, admin=True)


async def get_caller(request: Request) -> Caller:
    caller: Caller = getattr(request.state, "caller", OPEN)
    return caller


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_reader(request: Request) -> Reader:
    reader: Reader = request.app.state.reader
    return reader


async def get_settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.settings
    return settings


CallerDep = Annotated[Caller, Depends(get_caller)]
EngineDep = Annotated[Engine, Depends(get_engine)]
ReaderDep = Annotated[Reader, Depends(get_reader)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
