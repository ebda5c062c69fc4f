"""Accounts and access over a real server: tokens, owners, admins, the dashboard cookie, open
mode, the public-bind refusal, Host and cross-site checks, CORS, and the JSON body cap."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from droptune.core.errors import Invalid, NotFound
from droptune.core.spec.study import StudySpec
from droptune.storage.access import tokens
from droptune.storage.optuna_bridge import ensure_study, optuna_storage
from droptune.storage.sql import tables
from droptune.storage.sql.db import create_engine
from tests import datafiles, procs

TINY = {
    "name": "alice's",
    "dataset": {"builtin": "iris"},
    "model": {"hidden": [8]},
    "training": {"epochs": 2},
    "cv": {"folds": 3},
    "evaluation": {"holdout": 0},
    "search": {"n_trials": 2},
}
MISSING = 999_999


def token(url: str, name: str, *flags: str) -> str:
    """`droptune token create`, as an operator runs it: the token is the one line on stdout."""
    env = procs._env(url, None)
    done = procs.cli("token", "create", "--name", name, *flags, env=env)
    assert done.returncode == 0, done.stderr
    assert "shown once" in done.stderr
    value = done.stdout.strip()
    assert value.startswith("dt_") and len(value) > 40
    return value


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def served(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real server and worker on a SQLite file: (base URL, database URL)."""
    with procs.service(sqlite_url, tmp_path) as (base, _worker):
        yield base, sqlite_url


def _same_404(r: httpx.Response, missing: httpx.Response, study_id: int) -> None:
    """A cross-owner request answers exactly what a request for a missing id does."""
    assert r.status_code == 404, (r.request.url, r.text)
    assert missing.status_code == 404
    assert r.json()["detail"] == missing.json()["detail"].replace(str(MISSING), str(study_id))


def test_tokens_are_stored_hashed_and_revoked(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        assert not tokens.any_exist(engine)
        value = tokens.create(engine, "alice")
        assert tokens.identify(engine, value) == tokens.Identity("alice", admin=False)
        assert tokens.identify(engine, value + "x") is None
        with engine.connect() as conn:
            stored = conn.execute(sa.select(tables.tokens.c.hash, tables.tokens.c.prefix)).one()
        assert stored.hash != value and value not in stored.hash and len(stored.prefix) < 12
        given = "g" * 40
        assert tokens.create(engine, "root", admin=True, token=given) == given
        assert tokens.create(engine, "root", admin=True, token=given) == given  # a no-op
        with pytest.raises(Invalid):
            tokens.create(engine, "mallory", token=given)  # someone else's token
        with pytest.raises(Invalid):
            tokens.create(engine, "root", token="short")
        with pytest.raises(Invalid):
            tokens.create(engine, "bad\x00name")
        assert [r.owner for r in tokens.revoke(engine, "owner:alice")] == ["alice"]
        assert tokens.identify(engine, value) is None
        with pytest.raises(NotFound):
            tokens.revoke(engine, "owner:alice")
        assert tokens.any_exist(engine)  # revoked tokens still count: no way back to open
        assert [r.owner for r in tokens.list_tokens(engine)] == ["root"]
        assert len(tokens.list_tokens(engine, include_revoked=True)) == 2
    finally:
        engine.dispose()


def test_owners_are_isolated_and_admins_see_all(served: tuple[str, str], tmp_path: Path) -> None:
    base, url = served
    # Open mode first: no token yet, loopback: everything works without one.
    assert httpx.get(f"{base}/studies").status_code == 200
    alice, bob = token(url, "alice"), token(url, "bob")
    root = token(url, "root", "--admin")
    # At most a second later, every route but /healthz needs a token.
    procs.wait_until(lambda: httpx.get(f"{base}/studies").status_code == 401, 5, "token mode")
    r = httpx.get(f"{base}/studies")
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.headers["content-type"] == "application/problem+json"
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert httpx.get(f"{base}/studies", headers=bearer("dt_wrong")).status_code == 401

    a, b, adm = (httpx.Client(base_url=base, headers=bearer(t)) for t in (alice, bob, root))
    study = a.post("/studies", json=TINY)
    assert study.status_code == 201, study.text
    sid = study.json()["id"]
    assert study.json()["owner"] == "alice"
    csv = datafiles.cancer_csv(tmp_path / "cancer.csv")
    with csv.open("rb") as f:
        up = a.post("/datasets", files={"file": (csv.name, f)})
    assert up.status_code == 201, up.text
    did = up.json()["id"]

    # Bob: alice's study and data set do not exist for him, on every route.
    for path in ("", "/best", "/trials", "/curve", "/curve?format=svg", "/model", "/events"):
        _same_404(b.get(f"/studies/{sid}{path}"), b.get(f"/studies/{MISSING}{path}"), sid)
    _same_404(b.post(f"/studies/{sid}/cancel"), b.post(f"/studies/{MISSING}/cancel"), sid)
    _same_404(b.delete(f"/studies/{sid}"), b.delete(f"/studies/{MISSING}"), sid)
    _same_404(b.get(f"/datasets/{did}"), b.get(f"/datasets/{MISSING}"), did)
    _same_404(b.delete(f"/datasets/{did}"), b.delete(f"/datasets/{MISSING}"), did)
    assert b.get("/studies").json()["total"] == 0
    assert b.get("/datasets").json()["total"] == 0
    assert b.get("/studies", params={"owner": "alice"}).status_code == 403
    bob_spec = {**TINY, "dataset": {"id": did}}
    refused = b.post("/studies", json=bob_spec)  # naming alice's data set: not found for him
    assert refused.status_code == 422 and str(did) in refused.text, refused.text
    assert b.get("/metrics").status_code == 403
    assert a.get("/dashboard").status_code == 200  # their own studies (test below)

    # Alice sees hers; the admin sees everyone's and can narrow by owner.
    assert [s["id"] for s in a.get("/studies").json()["items"]] == [sid]
    assert a.get(f"/datasets/{did}").status_code == 200
    listed = adm.get("/studies").json()
    assert listed["total"] == 1 and listed["items"][0]["owner"] == "alice"
    assert adm.get("/studies", params={"owner": "alice"}).json()["total"] == 1
    assert adm.get("/studies", params={"owner": "bob"}).json()["total"] == 0
    assert adm.get(f"/studies/{sid}/trials").status_code == 200
    assert adm.get(f"/datasets/{did}").status_code == 200
    assert adm.get("/metrics").status_code == 200

    # The study runs for its owner; a revoked token is refused from the next request on.
    best = a.get(f"/studies/{sid}/best", params={"wait": 120}, timeout=130).json()
    assert best["status"] == "succeeded", best
    done = procs.cli("token", "revoke", "owner:bob", env=procs._env(url, None))
    assert done.returncode == 0 and "revoked token" in done.stdout, done.stderr
    assert b.get("/studies").status_code == 401
    assert a.get("/studies").status_code == 200
    assert adm.delete(f"/studies/{sid}").status_code == 204  # an admin may delete anyone's
    assert a.get(f"/studies/{sid}").status_code == 404
    listed_tokens = procs.cli("token", "list", env=procs._env(url, None)).stdout
    assert "alice" in listed_tokens and "bob" not in listed_tokens
    assert alice not in listed_tokens  # only the first characters are ever shown
    for c in (a, b, adm):
        c.close()


def test_dashboard_shows_each_owner_their_own_and_stays_read_only(
    sqlite_url: str, tmp_path: Path
) -> None:
    port = procs.free_port()
    extra = {"DROPTUNE_EVENTS_REVALIDATE_SECONDS": "0.5"}
    api = procs.serve(sqlite_url, port, tmp_path / "serve.log", extra)
    base = f"http://127.0.0.1:{port}"
    try:
        user, root = token(sqlite_url, "carol"), token(sqlite_url, "root", "--admin")
        other = token(sqlite_url, "dave")
        # carol's and dave's studies as a worker would have opened them in Optuna (what the
        # dashboard lists).
        made = httpx.post(f"{base}/studies", json=TINY, headers=bearer(user)).json()
        theirs = httpx.post(f"{base}/studies", json=TINY, headers=bearer(other)).json()
        storage = optuna_storage(sqlite_url)
        ensure_study(storage, made["optuna_study"], StudySpec(**TINY), made["id"])
        ensure_study(storage, theirs["optuna_study"], StudySpec(**TINY), theirs["id"])
        hidden = storage.get_study_id_from_name(theirs["optuna_study"])
        storage.engine.dispose()
        time.sleep(1.1)  # open mode looks for a new token at most once a second
        assert httpx.get(f"{base}/dashboard").status_code == 401
        # A browser (it asks for HTML) without the cookie is sent to the sign-in page.
        to_login = httpx.get(f"{base}/dashboard", headers={"Accept": "text/html"})
        assert to_login.status_code == 303 and to_login.headers["location"] == "/login"
        assert httpx.get(f"{base}/api/studies").status_code == 401
        # Issue 22: a non-admin opens the dashboard, and sees only their own studies.
        assert httpx.get(f"{base}/dashboard", headers=bearer(user)).status_code == 200
        mine = httpx.get(f"{base}/api/studies", headers=bearer(user)).json()
        # named with their status (the study list shows names only)
        assert [x["study_name"] for x in mine["study_summaries"]] == [
            f"{made['optuna_study']} \u00b7 queued"
        ]
        for path in (f"/api/studies/{hidden}", f"/api/studies/{hidden}/param_importances"):
            peek = httpx.get(f"{base}{path}", headers=bearer(user))
            assert peek.status_code == 404, (path, peek.status_code, peek.text[:200])
            assert theirs["optuna_study"] not in peek.text
        everyone = httpx.get(f"{base}/api/studies", headers=bearer(root)).json()
        assert len(everyone["study_summaries"]) == 2  # an admin sees every owner's
        assert httpx.get(f"{base}/api/studies/{hidden}", headers=bearer(root)).status_code == 200
        page = httpx.get(f"{base}/login")
        assert page.status_code == 200 and "<form" in page.text
        wrong = httpx.post(f"{base}/login", data={"token": "dt_not-a-token"})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        assert "set-cookie" not in wrong.headers
        browser_form = {"Origin": base, "Sec-Fetch-Site": "same-origin"}  # as a browser sends it
        own = httpx.post(f"{base}/login", data={"token": user}, headers=browser_form)
        assert own.status_code == 303 and "set-cookie" in own.headers  # any token signs in
        with httpx.Client(base_url=base, cookies=own.cookies) as browser:
            listed = browser.get("/api/studies").json()["study_summaries"]
            assert [x["study_name"].split(" \u00b7 ")[0] for x in listed] == [made["optuna_study"]]
            assert browser.get(f"/api/studies/{hidden}").status_code == 404
        ok = httpx.post(f"{base}/login", data={"token": root}, headers=browser_form)
        assert ok.status_code == 303 and ok.headers["location"] == "/dashboard"
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        with httpx.Client(base_url=base, cookies=ok.cookies) as browser:
            assert browser.get("/dashboard").status_code == 200
            listed = browser.get("/api/studies")
            assert listed.status_code == 200
            names = [x["study_name"].split(" \u00b7 ")[0] for x in listed.json()["study_summaries"]]
            assert sorted(names) == sorted([made["optuna_study"], theirs["optuna_study"]])
            assert browser.get("/docs").status_code == 200
            # The cookie never authenticates a write; a bearer admin meets the read-only wall.
            assert browser.post("/api/studies", json={"study_name": "x"}).status_code == 401
            assert browser.post("/studies", json=TINY).status_code == 401
        written = httpx.post(f"{base}/api/studies", json={"study_name": "x"}, headers=bearer(root))
        assert written.status_code == 403 and "read-only" in written.text
        via_query = httpx.get(f"{base}/dashboard", params={"token": root})
        assert via_query.status_code == 303 and via_query.headers["location"] == "/dashboard"
        # from another site's link: no sign-in (login CSRF, found by an outside attack)
        linked = httpx.get(
            f"{base}/dashboard", params={"token": user}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert linked.status_code == 403 and "set-cookie" not in linked.headers
        assert "httponly" in via_query.headers["set-cookie"].lower()
        encoded = httpx.get(f"{base}/dashboard?%74oken={root}")  # `token`, percent-escaped
        assert encoded.status_code == 303
        # `?token=` elsewhere is not a sign-in: no cookie, no redirect.
        api_call = httpx.get(f"{base}/studies", params={"token": "x"}, headers=bearer(root))
        assert api_call.status_code == 200 and "set-cookie" not in api_call.headers
        time.sleep(0.5)  # the access log line is written after the answer
        log = (tmp_path / "serve.log").read_text()
        assert "[query redacted]" in log and root not in log  # the access log never shows it
        # An event stream opened with a token ends once the token is revoked.
        sid = httpx.post(f"{base}/studies", json=TINY, headers=bearer(user)).json()["id"]
        with httpx.stream(
            "GET", f"{base}/studies/{sid}/events", headers=bearer(user), timeout=20
        ) as events:
            assert events.status_code == 200
            lines = events.iter_lines()
            assert any(line.startswith("event: progress") for line in itertools.islice(lines, 6))
            revoked = procs.cli("token", "revoke", "owner:carol", env=procs._env(sqlite_url, None))
            assert revoked.returncode == 0, revoked.stderr
            started = time.monotonic()
            rest = list(lines)  # the server closes the stream
        assert time.monotonic() - started < 10, rest
        out = httpx.get(f"{base}/logout")
        assert out.status_code == 303 and 'droptune_session=""' in out.headers["set-cookie"]
    finally:
        procs.stop(api)


def test_open_mode_browsers_hosts_and_body_cap(sqlite_url: str, tmp_path: Path) -> None:
    port = procs.free_port()
    api = procs.serve(sqlite_url, port, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        made = httpx.post(f"{base}/studies", json=TINY)  # open mode: as before tokens existed
        assert made.status_code == 201 and made.json()["owner"] == "local"
        sid = made.json()["id"]
        assert httpx.get(f"{base}/dashboard").status_code == 200
        # A page on another site cannot cancel (the body-less POST a form or fetch can send).
        evil = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
        r = httpx.post(f"{base}/studies/{sid}/cancel", headers=evil)
        assert r.status_code == 403 and "cross-site" in r.json()["detail"]
        r = httpx.post(f"{base}/studies/{sid}/cancel", headers={"Origin": "null"})
        assert r.status_code == 403
        r = httpx.post(f"{base}/studies/{sid}/cancel", headers={"Sec-Fetch-Site": "same-site"})
        assert r.status_code == 403
        assert httpx.get(f"{base}/studies/{sid}").json()["status"] == "queued"
        # This server's own pages (/docs' "Try it out") may: same origin, whatever the scheme
        # a proxy in front shows the browser.
        own = {"Origin": f"https://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
        ok = httpx.post(f"{base}/studies/{sid}/cancel", headers=own)
        assert ok.status_code == 200 and ok.json()["status"] == "cancelled"
        # DNS rebinding: a name that is not this server's is refused.
        r = httpx.get(f"{base}/studies", headers={"Host": "attacker.example"})
        assert r.status_code == 400 and "DROPTUNE_ALLOWED_HOSTS" in r.json()["detail"]
        assert (
            httpx.get(f"{base}/studies", headers={"Host": f"localhost:{port}"}).status_code == 200
        )
        # CORS is off: a preflight gets no Access-Control-Allow-Origin.
        pre = httpx.options(
            f"{base}/studies",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in pre.headers
        # A JSON body over DROPTUNE_MAX_BODY_MB (1): 413 before it is read, nothing stored.
        big = json.dumps({**TINY, "name": "x" * (1_100_000)})
        r = httpx.post(f"{base}/studies", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "DROPTUNE_MAX_BODY_MB" in r.json()["detail"]
        assert httpx.get(f"{base}/studies").json()["total"] == 1
    finally:
        procs.stop(api)


def test_a_study_no_worker_can_hold_is_refused_at_submit(sqlite_url: str, tmp_path: Path) -> None:
    """The issue's case: hidden [8192] x 8 on iris against 6 GiB workers; nothing stored."""
    port = procs.free_port()
    extra = {"DROPTUNE_WORKER_MEMORY_GB": "6"}
    api = procs.serve(sqlite_url, port, tmp_path / "serve.log", extra)
    base = f"http://127.0.0.1:{port}"
    try:
        huge = {**TINY, "model": {"hidden": [8192] * 8}}
        r = httpx.post(f"{base}/studies", json=huge)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "model.hidden"
        assert "GiB" in r.json()["detail"]
        assert httpx.get(f"{base}/studies").json()["total"] == 0
        assert httpx.post(f"{base}/studies", json=TINY).status_code == 201
    finally:
        procs.stop(api)


def test_cors_origins_when_configured(sqlite_url: str, tmp_path: Path) -> None:
    port = procs.free_port()
    site = "http://notebooks.example"
    extra = {"DROPTUNE_CORS_ORIGINS": site}
    api = procs.serve(sqlite_url, port, tmp_path / "serve.log", extra)
    base = f"http://127.0.0.1:{port}"
    try:
        pre = httpx.options(
            f"{base}/studies",
            headers={
                "Origin": site,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == site
        r = httpx.post(f"{base}/studies", json=TINY, headers={"Origin": site})
        assert r.status_code == 201, r.text
    finally:
        procs.stop(api)


def test_public_bind_needs_a_token_or_insecure(sqlite_url: str, tmp_path: Path) -> None:
    env = procs._env(sqlite_url, None)
    port = procs.free_port()
    refused = procs.cli("serve", "--host", "0.0.0.0", "--port", str(port), env=env, timeout=60)
    assert refused.returncode == 1
    assert "droptune token create" in refused.stderr and "--insecure" in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: refusing to serve")

    log = tmp_path / "insecure.log"
    proc = procs.droptune(
        ["serve", "--host", "0.0.0.0", "--port", str(port), "--insecure"], sqlite_url, log
    )
    try:
        procs.wait_until(lambda: procs._healthy(port), 60, "the insecure server")
        assert "with no token (--insecure)" in log.read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/studies").status_code == 200
    finally:
        procs.stop(proc)

    token(sqlite_url, "root", "--admin")  # with a token it starts, and needs one
    proc = procs.droptune(["serve", "--host", "0.0.0.0", "--port", str(port)], sqlite_url, log)
    try:
        procs.wait_until(lambda: procs._healthy(port), 60, "the server with a token")
        assert httpx.get(f"http://127.0.0.1:{port}/studies").status_code == 401
    finally:
        procs.stop(proc)
