"""A poll's bearer token is checked by the poll's own read, in one statement with the study
(service/middleware/polls.py, storage/readmodel/versions.py), on SQLite and PostgreSQL: the
answers are those the routes give with the token looked up on its own (401 for a token that is
not live, from the very next poll after a revocation; 404 for another owner's study; an admin
sees every study), the ETag is the same whoever asks, and a poll runs one SELECT."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from droptune.storage.access import tokens
from tests.integration.test_etag import ADMIN, ALICE, BOB, ROUTES, Setup
from tests.integration.test_etag import setup as setup  # the fixture

ROUTE_NAMES = list(ROUTES)


@pytest.mark.parametrize("route", ROUTE_NAMES)
def test_a_revoked_token_is_refused_by_the_next_poll_as_by_any_route(
    setup: Setup, route: str
) -> None:
    assert setup.get(route).status_code == 200
    tokens.revoke(setup.world.engine, ALICE)
    polled = setup.get(route)
    routed = setup.api.get("/studies", headers={"Authorization": f"Bearer {ALICE}"})
    assert polled.status_code == routed.status_code == 401
    assert polled.json() == routed.json()
    assert polled.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("route", ROUTE_NAMES)
def test_an_unknown_token_is_401_even_for_a_missing_study(setup: Setup, route: str) -> None:
    headers = {"Authorization": "Bearer dt_" + "n" * 40}
    for sid in (setup.sid, 987_654):
        r = setup.api.get(ROUTES[route].format(sid=sid), headers=headers)
        assert r.status_code == 401, sid
        assert r.json()["detail"] == "the token is not valid (revoked, or mistyped)"


@pytest.mark.parametrize("route", ROUTE_NAMES)
def test_owner_admin_and_others_see_what_they_saw(setup: Setup, route: str) -> None:
    mine, theirs = setup.get(route), setup.get(route, token=BOB)
    admins = setup.get(route, token=ADMIN)
    assert mine.status_code == admins.status_code == 200
    assert mine.content == admins.content and mine.headers["etag"] == admins.headers["etag"]
    assert theirs.status_code == 404
    missing = ROUTES[route].format(sid=987_654)
    mine_missing = setup.api.get(missing, headers={"Authorization": f"Bearer {ALICE}"})
    detail = mine_missing.json()["detail"].replace("987654", str(setup.sid))
    assert theirs.json()["detail"] == detail


@pytest.fixture
def selects(setup: Setup) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    app: Any = setup.api.app
    sa.event.listen(app.state.engine, "before_cursor_execute", count)
    yield seen
    sa.event.remove(app.state.engine, "before_cursor_execute", count)


def test_a_poll_of_best_with_a_token_is_one_select(setup: Setup, selects: list[str]) -> None:
    etag = setup.get("best").headers["etag"]
    selects.clear()
    assert setup.get("best", etag=etag).status_code == 304
    assert len(selects) == 1, selects
    assert "droptune_tokens" in selects[0] and "droptune_studies" in selects[0]


def test_a_token_revoked_while_its_wait_is_held_gets_401_not_the_answer(setup: Setup) -> None:
    """An outside attack held `?wait=15`, revoked the token 2 s in, and got the answer 13 s
    later: the wait now checks the token again before it answers."""
    import threading
    import time

    path = ROUTES["best"].format(sid=setup.sid)
    auth = {"Authorization": f"Bearer {ALICE}"}
    revoke = threading.Timer(0.5, tokens.revoke, (setup.world.engine, ALICE))
    revoke.start()
    t = time.monotonic()
    r = setup.api.get(f"{path}?wait=2", headers={**auth, "If-None-Match": "*"})
    revoke.join()
    assert time.monotonic() - t >= 1.5  # held to the end of its wait, then refused
    assert r.status_code == 401, (r.status_code, r.text[:200])
    assert "revoked while the request was held" in r.json()["detail"]
    # Another owner's live token is not affected.
    assert setup.get("best", token=BOB).status_code == 404
