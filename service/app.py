"""`create_app(settings)`: the API with its routers, errors, recovery task and the dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from droptune.core import logs
from droptune.core.errors import StorageError
from droptune.service import errors
from droptune.service.answers import Bodies
from droptune.service.held import HeldSlots
from droptune.service.middleware import auth, metrics
from droptune.service.middleware.head import HeadAsGet
from droptune.service.middleware.limits import BodyLimit
from droptune.service.middleware.polls import Polls
from droptune.service.routes import curve, datasets, docs, events, model
from droptune.service.routes.dashboard import Deferred, dashboard_app
from droptune.service.routes.studies import router as studies_router
from droptune.service.routes.workers import router as workers_router
from droptune.service.settings import ServiceSettings
from droptune.storage.dashboard_view import OwnerView
from droptune.storage.jobs.recovery import recover_stale
from droptune.storage.optuna_bridge import optuna_storage
from droptune.storage.readmodel.reads import Reader
from droptune.storage.sql.db import create_engine
from droptune.storage.submit.admission import MemoryLimit, host_memory_bytes

log = logging.getLogger("droptune.api")


async def _recover_forever(app: FastAPI, settings: ServiceSettings) -> None:
    """Stale leases are recovered even while no worker is running."""
    while True:
        await asyncio.sleep(settings.recover_every_seconds)
        try:
            await run_in_threadpool(
                recover_stale, app.state.engine, app.state.optuna, settings.lease_grace_seconds
            )
        except (StorageError, OSError) as exc:
            log.warning("lease recovery failed (will retry): %s", exc)
        except Exception:
            log.exception("lease recovery failed (will retry)")


def _lifespan(
    settings: ServiceSettings,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """The app's background work: lease recovery, and the dashboard built in a thread (when
    mounted); both stopped, and the database pools closed, at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(_recover_forever(app, settings))]
        dashboard: Deferred | None = getattr(app.state, "dashboard", None)
        if dashboard is not None:
            tasks.append(asyncio.create_task(dashboard.ready()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            app.state.engine.dispose()
            app.state.optuna.engine.dispose()
            app.state.optuna_read.engine.dispose()

    return lifespan


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()

    app = FastAPI(
        title="droptune",
        version="0.1.0",
        summary="Find the dropout rate that generalises best, by K-fold CV inside Optuna.",
        lifespan=_lifespan(settings),
        # Served from the package by docs.install (FastAPI's own pages load from a CDN).
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = create_engine(settings.database_url)
    app.state.optuna = optuna_storage(settings.database_url)  # recovery writes through it
    # Answers and the dashboard only read: on SQLite they need not queue for the write lock.
    app.state.optuna_read = optuna_storage(settings.database_url, writes=False)
    app.state.reader = Reader(app.state.engine, app.state.optuna_read)
    app.state.memory = memory_limit(settings)
    app.state.held = HeldSlots(settings.max_held_per_owner)
    app.state.bodies = Bodies()  # GET /best and /studies/{id}: JSON kept per version
    errors.install(app)
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        doc = build_openapi()
        auth.document(doc)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
    _middleware(app, settings)
    metrics.install(app, settings)  # outermost middleware (times 401s and 413s too)
    app.include_router(studies_router)
    app.include_router(events.router)  # its lifespan runs the study watcher
    app.include_router(curve.router)
    app.include_router(model.router)
    app.include_router(datasets.router)
    app.include_router(workers_router)
    docs.install(app)  # /docs, /redoc and /docs/static: before the dashboard's catch-all
    if settings.dashboard:
        # Last: the catch-all for /dashboard, /static and /api (see service/routes/dashboard.py).
        read, engine = app.state.optuna_read, app.state.engine
        # built by the lifespan; an owner's at their first request
        app.state.dashboard = Deferred(
            OwnerView(read, engine, None), lambda owner: OwnerView(read, engine, owner)
        )
        app.mount("/", dashboard_app(app.state.dashboard, lambda: app.routes))
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn's factory for `droptune serve --workers N` (an import string, `factory=True`):
    each process builds its app from the DROPTUNE_* variables `serve` set from its flags, and
    logs as `serve` does."""
    logs.configure()
    return create_app(ServiceSettings())


def memory_limit(settings: ServiceSettings) -> MemoryLimit:
    """What submits are admitted against (storage.admission.MemoryLimit). Serving a public
    address without DROPTUNE_WORKER_MEMORY_GB, a study submitted while no worker is live is
    checked against this host's memory rather than not at all (said once in the log)."""
    fallback = None
    if settings.worker_memory_gb is None and not auth.is_loopback(settings.host):
        fallback = host_memory_bytes()
        if fallback is not None:
            log.warning(
                "DROPTUNE_WORKER_MEMORY_GB is unset: while no worker is live, a study is admitted "
                "only if one batch fits this host's memory (%.1f GiB); set "
                "DROPTUNE_WORKER_MEMORY_GB to what a worker may use",
                fallback / 2**30,
            )
    return MemoryLimit(settings.worker_memory_gb, settings.lease_grace_seconds, fallback)


def _middleware(app: FastAPI, settings: ServiceSettings) -> None:
    """Inside out: the polled reads (service/middleware/polls.py), HEAD as GET, the body limits,
    access (service/middleware/auth.py), CORS when configured."""
    app.add_middleware(Polls, reader=app.state.reader, bodies=app.state.bodies)
    app.add_middleware(HeadAsGet)
    app.add_middleware(BodyLimit, settings=settings, upload_path="/datasets")
    # Outside the limit: a request without a token is refused before its body is read.
    app.add_middleware(auth.Access, settings=settings, engine=app.state.engine)
    origins = auth.cors_origins(settings)
    if origins:  # off unless configured: no page on another site may call the API
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            max_age=600,
        )
