"""`GET /metrics` for Prometheus, and the middleware that times every request.

Where the counts come from: the database, at scrape time, not from each worker. droptune keeps
every fact in its one database (studies and slots, Optuna's trials, workers' heartbeats), so a
query gives cluster-wide totals whichever process did the work, and they survive restarts (a
worker's in-process counter would reset, and vanish with a replica that was scaled down).
Workers also run on GPU machines Prometheus often cannot reach, and come and go with
`--scale`: one scrape target per worker would need service discovery for each. The API is the
one address everything already reaches. The cost is a handful of queries per scrape (one per
metric family), cached for `CACHE_SECONDS` per API process so that several Prometheus replicas
or a tight scrape interval cost at most one round every 5 s.

The request-latency histogram is in-process: only this API process knows its requests. With
several API replicas, scrape each: the database families are the same in every replica
(aggregate them with `max`), the request histograms differ (`sum` them).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from droptune.core import logs
from droptune.core.errors import StorageError
from droptune.core.states import LeaseKind
from droptune.service.settings import ServiceSettings
from droptune.storage.readmodel.metrics_sql import DURATION_BUCKETS, Snapshot, snapshot

log = logging.getLogger("droptune.metrics")

CACHE_SECONDS = 5.0
REQUEST_ID = "X-Request-ID"
# A request id a proxy sent is kept (so its logs and ours line up) when it looks like one.
_GOOD_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # a path no route takes (404 without the dashboard's catch-all)
# Requests take milliseconds; `?wait=` on /best and the event stream hold up to minutes.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600)

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    """Prometheus metrics in the text exposition format (studies, queue, trials, workers,
    request latency)."""
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI, settings: ServiceSettings) -> None:
    """The registry on `app.state.metrics`, the request middleware and the route.

    A registry per app, not prometheus_client's global one: tests build many apps in one
    process, and each must count only its own requests."""
    # No `_created` series beside every histogram (process-wide; untyped in prometheus-client).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # memory, CPU, open files of the API process
    registry.register(DatabaseCollector(app.state.engine, settings.lease_grace_seconds))
    registry.register(HeldCollector(app))
    requests = Histogram(
        "droptune_http_request_duration_seconds",
        "API requests by method, route template and status class, until the response ended "
        "(an event stream counts when it closes).",
        ["method", "route", "status"],
        buckets=REQUEST_BUCKETS,
        registry=registry,
    )
    app.state.metrics = registry
    app.add_middleware(RequestMetrics, histogram=requests, table=RouteTable(app))
    app.include_router(router)


class HeldCollector(Collector):
    """The requests this API process holds open (`?wait=` and event streams, service/held.py)."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "droptune_api_held_requests",
            "Held `?wait=` requests and event streams open in this API process.",
            self._app.state.held.total,
        )


class DatabaseCollector(Collector):
    """Families read from the database (storage/readmodel/metrics_sql.py), at most once per `ttl`.

    The lock makes concurrent scrapes wait for one query instead of each running their own. A
    database that cannot be reached gives `droptune_database_up 0` and no other family of
    its own (absent, not zero: a zero would read as a real count)."""

    def __init__(self, engine: Engine, grace_seconds: float, ttl: float = CACHE_SECONDS) -> None:
        self._engine = engine
        self._grace = grace_seconds
        self._ttl = ttl
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._snap: Snapshot | None = None

    def _snapshot(self) -> Snapshot | None:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self._ttl:
                try:
                    self._snap = snapshot(self._engine, self._grace)
                except StorageError as exc:
                    log.warning("metrics: the database is unavailable: %s", exc)
                    self._snap = None
                self._at = now
            return self._snap

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        yield GaugeMetricFamily(
            "droptune_database_up", "Whether the last read of the counts worked.", int(bool(snap))
        )
        if snap is not None:
            yield from families(snap)


def families(snap: Snapshot) -> Iterator[Metric]:
    """The database's counts as Prometheus families. Totals that only grow are counters."""
    studies = GaugeMetricFamily("droptune_studies", "Studies by status.", labels=["status"])
    for status, n in snap.studies.items():
        studies.add_metric([status], n)
    yield studies
    queue = GaugeMetricFamily(
        "droptune_queue_depth",
        "Work waiting for a worker: open trial slots of active studies (kind=trial) and final "
        "refits ready to run (kind=refit).",
        labels=["kind"],
    )
    queue.add_metric([LeaseKind.TRIAL.value], snap.open_slots)
    queue.add_metric([LeaseKind.REFIT.value], snap.refits_ready)
    yield queue
    finished = CounterMetricFamily(
        "droptune_trials_finished", "Trials that ended, by Optuna state.", labels=["state"]
    )
    for state, n in snap.finished.items():
        finished.add_metric([state.lower()], n)
    yield finished
    yield CounterMetricFamily(
        "droptune_trials_retried",
        "Trials that ran parameters again after an earlier attempt failed.",
        value=snap.retried,
    )
    yield CounterMetricFamily(
        "droptune_lease_expiries_recovered",
        "Trials whose worker stopped heartbeating and whose lease recovery took over.",
        value=snap.recovered,
    )
    yield GaugeMetricFamily(
        "droptune_workers_live",
        "Workers that heartbeat within the grace period.",
        snap.live_workers,
    )
    durations = HistogramMetricFamily(
        "droptune_trial_duration_seconds",
        "Training time of finished trials (their train_seconds), by state.",
        labels=["state"],
    )
    for state, d in snap.durations.items():
        buckets = [
            (repr(float(b)), float(n)) for b, n in zip(DURATION_BUCKETS, d.cumulative, strict=True)
        ]
        durations.add_metric([state.lower()], [*buckets, ("+Inf", float(d.count))], d.total)
    yield durations


class RouteTable:
    """The API's path templates, from its OpenAPI schema (compiled on first use).

    FastAPI sets `scope["route"]` only on the scope its router sees; a middleware that copies
    the scope (HeadAsGet), a method the route does not take (answered 405 by the dashboard's
    catch-all) or a log line before routing would not see it. The schema lists every template
    of droptune's own routes, in routing order."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None

    def match(self, scope: Scope) -> tuple[str, dict[str, str]] | None:
        if self._compiled is None:
            paths = self._app.openapi().get("paths", {})
            self._compiled = [(compile_path(p)[0], p) for p in paths]
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        for regex, template in self._compiled:
            found = regex.match(path)
            if found:
                return template, found.groupdict()
        return None


class RequestMetrics:
    """Times every HTTP request and gives it an id; pure ASGI.

    Not Starlette's BaseHTTPMiddleware, which runs the app in another task and breaks streaming
    responses (the event stream) and request-scoped context. The route label is the template of
    the route that took the request (`/studies/{study_id}/best`; `/{path}` for the dashboard's
    mount), never the raw path, so the number of series stays bounded whatever clients send.
    The request id (an `X-Request-ID` the client sent, else a new one) is returned in that
    header and bound to the request's log lines, with the study when the path names one."""

    def __init__(self, app: ASGIApp, histogram: Histogram, table: RouteTable) -> None:
        self.app = app
        self._histogram = histogram
        self._table = table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        own = self._table.match(scope)
        study = own[1].get("study_id", "") if own else ""
        request_id = _request_id(scope)
        root = scope.get("root_path", "")
        status = 500  # unless the app starts a response: an error escaped it

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID] = request_id
            await send(message)

        start = time.perf_counter()
        token = logs.bind_context(
            request=request_id, study=int(study) if study.isascii() and study.isdigit() else None
        )
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            # The id stays bound: the 500 handler, outside this middleware, logs the traceback
            # with it (the request's own task ends right after, and its context with it).
            raise
        else:
            logs.unbind_context(token)
        finally:
            elapsed = time.perf_counter() - start
            method = scope["method"] if scope["method"] in METHODS else "other"
            label = route_label(scope, own[0] if own else None, root)
            self._histogram.labels(method, label, f"{status // 100}xx").observe(elapsed)


def route_label(scope: Scope, own: str | None, root: str) -> str:
    """The route a finished request went to: the one FastAPI matched, else droptune's template
    for its path, else the mount that took it (its prefix and `/{path}`), else `unmatched`."""
    route = scope.get("route")
    if isinstance(route, BaseRoute) and getattr(route, "path_format", None):
        return str(route.path_format)  # type: ignore[attr-defined]
    if own is not None:
        return own
    if "endpoint" in scope:  # a mount took it; its prefix is what it added to root_path
        return f"{scope.get('root_path', '')[len(root) :]}/{{path}}"
    return UNMATCHED


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = bytes(value).decode("latin-1")
            if _GOOD_ID.fullmatch(text):
                return text
    return uuid.uuid4().hex
