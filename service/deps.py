"""Dependencies: the caller's owner, the database, the reader — one place each.

Async: a plain `def` dependency costs a thread-pool hop per request (they only read app state)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Engine

from droptune.service.settings import ServiceSettings
from droptune.storage.reads import Reader

LOCAL_OWNER = "local"


async def get_owner() -> str:
    """The caller. Today every caller is the anonymous local owner; bearer tokens replace this."""
    return LOCAL_OWNER


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_reader(request: Request) -> Reader:
    reader: Reader = request.app.state.reader
    return reader


async def get_settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.settings
    return settings


Owner = Annotated[str, Depends(get_owner)]
EngineDep = Annotated[Engine, Depends(get_engine)]
ReaderDep = Annotated[Reader, Depends(get_reader)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
