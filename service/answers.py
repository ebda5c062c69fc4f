"""The bytes of GET /studies/{id}/best and GET /studies/{id}, built once per version.

A poller asks the same answer again and again, and it changes only when a trial finishes or the
study moves on. storage/readmodel/versions.py reads the row and names its version (a digest of
everything the body is made from); the body's JSON is built once per (route, study, version)
and kept here, in this process, so a poll of an unchanged answer costs the read and a dict look-up
instead of decoding the answer, validating it through pydantic and serialising it again. The
bytes are those FastAPI would write for the route's `response_model` (the same serialiser).

The version is also the response's strong `ETag`; a request whose `If-None-Match` names it is
answered 304 with no body. The read that names the version is scoped to the caller first, so
another owner's study is a 404 whatever the request's `If-None-Match` says.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, TypeAdapter
from starlette.responses import Response
from starlette.types import Scope

from droptune.storage.readmodel.versions import Versioned

POLLED = re.compile(r"/studies/([1-9][0-9]{0,18})(/best)?")
DB_INT = 2**63 - 1  # as the routes' StudyId
MAX_ENTRIES = 256  # answers kept (a /best of a study with thousands of trials is ~30 KB)
JSON = "application/json"


class Bodies:
    """The JSON bytes of the latest versions asked for, least recently used dropped first."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._max = max_entries
        self._kept: OrderedDict[tuple[str, int, str], bytes] = OrderedDict()
        self._lock = threading.Lock()  # the reads run in the thread pool
        self._adapters: dict[type[BaseModel], TypeAdapter[Any]] = {}

    def get(self, key: tuple[str, int, str], build: Callable[[], BaseModel]) -> bytes:
        with self._lock:
            body = self._kept.get(key)
            if body is not None:
                self._kept.move_to_end(key)
                return body
        body = self.dump(build())  # outside the lock: two first polls may both build it
        with self._lock:
            self._kept[key] = body
            while len(self._kept) > self._max:
                self._kept.popitem(last=False)
        return body

    def dump(self, value: BaseModel) -> bytes:
        """`value` as FastAPI serialises a `response_model` (by alias, nothing excluded)."""
        kind = type(value)
        adapter = self._adapters.get(kind)
        if adapter is None:
            adapter = self._adapters[kind] = TypeAdapter(kind)
        return adapter.dump_json(value, by_alias=True)

    def __len__(self) -> int:
        return len(self._kept)


def polled(scope: Scope) -> tuple[int, str] | None:
    """(study id, "best" or "study") for a request service/middleware/polls.py answers itself:
    a plain GET of /studies/{id}/best or /studies/{id}, no query string, no root path."""
    if scope["type"] != "http" or scope["method"] != "GET" or scope["query_string"]:
        return None
    found = POLLED.fullmatch(scope["path"])
    if found is None or scope.get("root_path") or not 1 <= int(found.group(1)) <= DB_INT:
        return None
    return int(found.group(1)), "best" if found.group(2) else "study"


def quoted(etag: str) -> str:
    return f'"{etag}"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2: `*`, or any listed tag equal to `etag` by weak comparison."""
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return any(t == "*" or t.removeprefix("W/") == quoted(etag) for t in tags)


def respond(
    bodies: Bodies,
    route: str,
    study_id: int,
    read: Callable[[], Versioned[Any]],
    if_none_match: str | None,
) -> Response:
    """`read()` (the study's version, scoped to the caller: a 404 first), then 304 when the
    client holds this version, else the version's bytes with its ETag (a stale answer, just
    recomputed, goes without one: the next poll names it). Runs in the thread pool."""
    got = read()
    if got.etag is None:
        return Response(bodies.dump(got.build()), media_type=JSON)
    headers = {"ETag": quoted(got.etag)}
    if matches(if_none_match, got.etag):
        return Response(status_code=304, headers=headers)
    body = bodies.get((route, study_id, got.etag), got.build)
    return Response(body, media_type=JSON, headers=headers)
