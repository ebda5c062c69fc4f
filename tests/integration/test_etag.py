"""ETag / If-None-Match on GET /studies/{id}/best and GET /studies/{id}, and their bytes kept per
version (service/answers.py, storage/readmodel/versions.py), on SQLite and PostgreSQL.

The ETag changes with every column the body shows (status, reason, progress counts, the cached
answer, the refit's result) and with nothing else; a 304 carries the ETag and no body; another
owner's study is a 404 whatever If-None-Match says; the bytes are those FastAPI writes for the
route's response_model from the plain read."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from droptune.core.schemas import BestOut, StudyOut
from droptune.service.app import create_app
from droptune.service.middleware import polls
from droptune.service.settings import ServiceSettings
from droptune.storage.access import tokens
from droptune.storage.optuna_bridge import optuna_storage
from droptune.storage.readmodel.reads import Reader
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.sql.tables import studies
from tests.integration.test_reads import World, insert_trials, scored_trial

ALICE, BOB, ADMIN = ("tok-" + who.ljust(32, "x") for who in ("alice", "bob", "admin"))
ROUTES = {"best": "/studies/{sid}/best", "study": "/studies/{sid}"}


@dataclass
class Setup:
    world: World
    api: TestClient
    sid: int
    oid: int

    def get(self, route: str, token: str = ALICE, etag: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        if etag is not None:
            headers["If-None-Match"] = etag
        return self.api.get(ROUTES[route].format(sid=self.sid), headers=headers)

    def update(self, **values: Any) -> None:
        with transaction(self.world.engine) as conn:
            conn.execute(studies.update().where(studies.c.id == self.sid).values(**values))

    def plain(self, route: str) -> Any:
        """What the plain read gives now, as JSON."""
        r = self.world.reader
        out = r.best(self.sid, "alice") if route == "best" else r.study(self.sid, "alice")
        return out.model_dump(mode="json")


@pytest.fixture
def setup(db_url: str) -> Iterator[Setup]:
    engine = create_engine(db_url)
    storage = optuna_storage(db_url)
    world = World(db_url, engine, storage, Reader(engine, optuna_storage(db_url, writes=False)))
    tokens.create(engine, "alice", token=ALICE)
    tokens.create(engine, "bob", token=BOB)
    tokens.create(engine, "root", admin=True, token=ADMIN)
    rng = random.Random(7)
    sid, oid = world.study("alice", [scored_trial(rng) for _ in range(12)])
    app = create_app(ServiceSettings(database_url=db_url, dashboard=False))
    with TestClient(app, base_url="http://localhost") as api:
        s = Setup(world, api, sid, oid)
        s.get("best")  # the first read computes the answer and keeps it on the row
        yield s
    for e in (engine, storage.engine, world.reader.optuna.engine):  # type: ignore[union-attr]
        e.dispose()


def fresh_etag(s: Setup, route: str) -> str:
    """The route's ETag once its answer is current (a stale one is answered without)."""
    r = s.get(route)
    if "etag" not in r.headers:
        r = s.get(route)
    assert r.status_code == 200
    assert r.json() == s.plain(route)
    etag: str = r.headers["etag"]
    return etag


@pytest.mark.parametrize("route", ["best", "study"])
def test_a_matching_if_none_match_is_304_with_the_etag_and_no_body(
    setup: Setup, route: str
) -> None:
    r = setup.get(route)
    etag = r.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    assert setup.get(route).headers["etag"] == etag  # unchanged study: the same tag
    for sent in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        again = setup.get(route, etag=sent)
        assert again.status_code == 304, sent
        assert again.headers["etag"] == etag
        assert again.content == b""
        assert "content-type" not in again.headers
    other = setup.get(route, etag='"something-else"')
    assert other.status_code == 200 and other.json() == setup.plain(route)


CHANGES: dict[str, Callable[[Setup], None]] = {
    "status": lambda s: s.update(status="succeeded"),
    "reason": lambda s: s.update(reason="search settled after 12 of at most 2000 trials"),
    "refit result": lambda s: s.update(
        refit_result={
            "dropout": 0.3,
            "score": 0.9,
            "ci95": [0.85, 0.95],
            "n": 40,
            "source": "holdout",
            "metric": "accuracy",
        }
    ),
    "cached answer": lambda s: s.update(
        answer={**s.world.row(s.sid).answer, "warnings": ["changed behind the API's back"]}
    ),
    # a refit done without unseen rows: the answer warns that the model has no test score
    "refit done": lambda s: s.update(refit_state="done"),
    "a trial finished": lambda s: insert_trials(
        s.world.storage, s.oid, [scored_trial(random.Random(99))]
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("route", ["best", "study"])
def test_the_etag_changes_with_what_the_body_shows(setup: Setup, route: str, change: str) -> None:
    before = fresh_etag(setup, route)
    body = setup.get(route).json()
    CHANGES[change](setup)
    after = fresh_etag(setup, route)  # and its body is the plain read's (checked there)
    assert after != before
    assert setup.get(route).json() != body
    r = setup.get(route, etag=before)  # the old tag no longer matches: the new body
    assert r.status_code == 200 and r.headers["etag"] == after


def test_progress_changes_the_study_etag_but_not_the_best_one(setup: Setup) -> None:
    """A running trial shows in the study's progress, not in the answer."""
    best, study = fresh_etag(setup, "best"), fresh_etag(setup, "study")
    running = scored_trial(random.Random(5), state=TrialState.RUNNING)
    insert_trials(setup.world.storage, setup.oid, [running])
    assert setup.get("best", etag=best).status_code == 304
    assert fresh_etag(setup, "study") != study
    assert setup.get("study").json()["progress"]["running"] == 1
    # and a column no body shows (a claim) changes neither
    best, study = fresh_etag(setup, "best"), fresh_etag(setup, "study")
    setup.update(slots_claimed=5, last_claim=3)
    assert fresh_etag(setup, "best") == best and fresh_etag(setup, "study") == study


def test_a_stale_answer_is_answered_without_an_etag_then_named(setup: Setup) -> None:
    insert_trials(setup.world.storage, setup.oid, [scored_trial(random.Random(3))])
    first = setup.get("best")
    assert first.status_code == 200 and "etag" not in first.headers
    assert first.json() == setup.plain("best")
    assert "etag" in setup.get("best").headers  # the answer was stored on the way


@pytest.mark.parametrize("route", ["best", "study"])
def test_another_owner_gets_404_whatever_if_none_match_says(setup: Setup, route: str) -> None:
    etag = setup.get(route).headers["etag"]
    for sent in (etag, "*"):
        r = setup.get(route, token=BOB, etag=sent)
        assert r.status_code == 404, r.text
        assert "etag" not in r.headers
        assert r.headers["content-type"] == "application/problem+json"
    assert setup.get(route, token=ADMIN, etag=etag).status_code == 304  # admins see all


@pytest.mark.parametrize("route", ["best", "study"])
def test_the_bytes_are_those_of_the_validated_path_and_built_once(setup: Setup, route: str) -> None:
    """The kept bytes equal what a route with the same response_model writes from the plain
    read (the path before bytes were kept); three polls build them once."""
    plain = FastAPI()
    reader = setup.world.reader

    @plain.get("/best", response_model=BestOut)
    def best() -> BestOut:
        return reader.best(setup.sid, "alice")

    @plain.get("/study", response_model=StudyOut)
    def study() -> StudyOut:
        return reader.study(setup.sid, "alice")

    bodies = setup.api.app.state.bodies  # type: ignore[attr-defined]
    built: list[bytes] = []
    dump = bodies.dump

    def counted(value: Any) -> bytes:
        built.append(dump(value))
        return built[-1]

    bodies.dump = counted
    got = [setup.get(route) for _ in range(3)]
    with TestClient(plain) as c:
        expected = c.get(f"/{route}").content
    assert all(r.content == expected for r in got)
    assert all(r.headers["content-type"] == "application/json" for r in got)
    assert len(built) <= 1  # built on the first poll (or before it, by the fixture's)


def test_the_openapi_document_still_names_the_models(setup: Setup) -> None:
    doc = setup.api.app.openapi()  # type: ignore[attr-defined]
    for path, model, params in (
        ("/studies/{study_id}/best", "BestOut", {"study_id", "wait"}),
        ("/studies/{study_id}", "StudyOut", {"study_id"}),
    ):
        op = doc["paths"][path]["get"]
        schema = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}
        assert {p["name"] for p in op.get("parameters", [])} == params


@pytest.mark.parametrize("route", ["best", "study"])
def test_polls_answered_before_routing_equal_the_routes_answers(
    setup: Setup, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain poll is answered by service/middleware/polls.py; with a query string it goes to
    the route: the same bytes, ETag and 304 either way, and the route's own checks still
    answer what the fast path leaves to it."""
    answered: list[int] = []
    hop = polls.run_in_threadpool

    async def counted(*args: Any) -> Any:
        answered.append(1)
        return await hop(*args)

    monkeypatch.setattr(polls, "run_in_threadpool", counted)
    fast = setup.get(route)
    assert answered == [1]  # before routing
    path = ROUTES[route].format(sid=setup.sid)
    query = "wait=0" if route == "best" else "unused=1"
    auth = {"Authorization": f"Bearer {ALICE}"}
    routed = setup.api.get(f"{path}?{query}", headers=auth)
    assert routed.status_code == fast.status_code == 200
    assert routed.content == fast.content
    assert routed.headers["etag"] == fast.headers["etag"]
    again = setup.api.get(
        f"{path}?{query}", headers={**auth, "If-None-Match": fast.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    # left to the routes: ids out of range, bad queries, another owner's study
    for bad in (ROUTES[route].format(sid=0), ROUTES[route].format(sid=2**63)):
        assert setup.api.get(bad, headers=auth).status_code == 422
    if route == "best":
        assert setup.api.get(f"{path}?wait=soon", headers=auth).status_code == 422
    other = setup.get(route, token=BOB)
    assert other.status_code == 404 and other.json()["status"] == 404
    assert "x-request-id" in fast.headers and "x-request-id" in other.headers
    head = setup.api.head(path, headers=auth)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["etag"] == fast.headers["etag"]
    assert len(answered) == 3  # the plain poll, another owner's (404: then routed), HEAD


def test_wait_with_if_none_match_holds_until_the_version_changes(setup: Setup) -> None:
    """`?wait=` with If-None-Match: an unchanged answer is held the whole wait, then a 304; a
    tag that no longer matches is answered at once; a trial finishing during the hold wakes it
    (through the process's study watcher) with the new answer."""
    etag = fresh_etag(setup, "best")
    path = ROUTES["best"].format(sid=setup.sid)
    auth = {"Authorization": f"Bearer {ALICE}"}
    t = time.monotonic()
    r = setup.api.get(f"{path}?wait=1", headers={**auth, "If-None-Match": etag})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
    assert time.monotonic() - t >= 0.9
    t = time.monotonic()
    r = setup.api.get(f"{path}?wait=30", headers={**auth, "If-None-Match": '"old"'})
    assert r.status_code == 200 and r.headers["etag"] == etag
    assert time.monotonic() - t < 5
    finish = threading.Timer(
        0.5, insert_trials, (setup.world.storage, setup.oid, [scored_trial(random.Random(8))])
    )
    finish.start()
    t = time.monotonic()
    r = setup.api.get(f"{path}?wait=30", headers={**auth, "If-None-Match": etag})
    finish.join()
    assert r.status_code == 200 and r.json() == setup.plain("best")
    assert r.json()["trial"] is not None and r.headers.get("etag") != etag
    assert 0.4 < time.monotonic() - t < 15  # woken by the change, not the end of the wait
    bob = {"Authorization": f"Bearer {BOB}", "If-None-Match": "*"}
    t = time.monotonic()
    assert setup.api.get(f"{path}?wait=30", headers=bob).status_code == 404
    assert time.monotonic() - t < 5  # refused at once, never held
