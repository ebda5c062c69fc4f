"""Dashboard sessions and the Host check, over a real server: the cookie is a random session id
(never the API token), stored hashed, ended by /logout, by revoking its token and by expiry,
`__Host-` and Secure over TLS; a malformed Host header is refused with 400."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from droptune.storage.access import sessions, tokens
from droptune.storage.sql import tables
from droptune.storage.sql.db import create_engine, db_now
from droptune.storage.sql.migrate import upgrade
from tests import procs
from tests.e2e.test_access import bearer, token

BROWSER_FORM = {"Origin": "", "Sec-Fetch-Site": "same-origin"}  # Origin filled in per server
HTML = {"Accept": "text/html"}
TLS = {"X-Forwarded-Proto": "https"}  # as a TLS proxy on this machine sends it


@pytest.fixture(scope="module")
def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """One real server for the module (the tests only add tokens and sessions of their own),
    with an admin token created by the CLI before it starts (no open-mode window). Uvicorn trusts
    X-Forwarded-Proto from FORWARDED_ALLOW_IPS, set here to this machine, as behind a local TLS
    proxy."""
    tmp = tmp_path_factory.mktemp("sessions")
    url = f"sqlite:///{tmp / 'droptune.db'}"
    upgrade(url)
    token(url, "operator", "--admin")
    port = procs.free_port()
    extra = {"FORWARDED_ALLOW_IPS": "127.0.0.1"}
    api = procs.serve(url, port, tmp / "serve.log", extra)
    try:
        # The dashboard is built in the background as the server starts: the tests' short
        # timeouts start once it is there (on a loaded machine the build takes seconds).
        httpx.get(f"http://127.0.0.1:{port}/dashboard", timeout=120)
        yield f"http://127.0.0.1:{port}", url
    finally:
        procs.stop(api)


@pytest.fixture
def admin_server(_server: tuple[str, str]) -> Iterator[tuple[str, str, str, str]]:
    """(base URL, database URL, an admin's token, a non-admin's token): the tokens new for each
    test, so one test's revocation or expired session touches no other's."""
    base, url = _server
    engine = create_engine(url)
    try:
        n = uuid.uuid4().hex[:8]
        root = tokens.create(engine, f"root-{n}", admin=True)
        user = tokens.create(engine, f"carol-{n}")
    finally:
        engine.dispose()
    yield base, url, root, user


def _login(base: str, value: str, headers: dict[str, str] | None = None) -> httpx.Response:
    form = {**BROWSER_FORM, "Origin": base, **(headers or {})}
    return httpx.post(f"{base}/login", data={"token": value}, headers=form)


def _set_cookie(r: httpx.Response) -> tuple[str, str, str]:
    """(name, value, the whole Set-Cookie line) of the one session cookie a response sets."""
    lines = [v for v in r.headers.get_list("set-cookie") if "droptune_session=" in v]
    assert len(lines) == 1, r.headers.get_list("set-cookie")
    pair = lines[0].split(";", 1)[0]
    name, _, value = pair.partition("=")
    return name, value, lines[0]


def _cookie_works(base: str, name: str, value: str, headers: dict[str, str] | None = None) -> int:
    with httpx.Client(base_url=base, cookies={name: value}, headers=headers) as browser:
        return browser.get("/dashboard").status_code


def _rows(url: str, token: str) -> dict[str, int]:
    """The stored sessions `token` opened: hash -> the id of that token."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            s, t = tables.sessions.c, tables.tokens.c
            mine = sa.select(t.id).where(t.hash == tokens.digest(token)).scalar_subquery()
            rows = conn.execute(sa.select(s.hash, s.token_id).where(s.token_id == mine))
            return {str(r.hash): int(r.token_id) for r in rows}
    finally:
        engine.dispose()


def test_the_cookie_is_a_session_id_stored_hashed(admin_server: tuple[str, str, str, str]) -> None:
    base, url, root, user = admin_server
    for r in (_login(base, root), httpx.get(f"{base}/dashboard", params={"token": root})):
        assert r.status_code == 303, r.text
        name, value, line = _set_cookie(r)
        assert name == "droptune_session"
        low = line.lower()
        assert "httponly" in low and "samesite=strict" in low and "path=/" in low
        assert "secure" not in low  # plain HTTP: a Secure cookie would never come back
        # Not the token, nor anything made from it.
        assert value != root and root not in line and root[3:20] not in value
        assert value not in (tokens.digest(root), hashlib.sha256(root.encode()).hexdigest())
        assert len(value) >= 40
        assert _cookie_works(base, name, value) == 200
        # The database holds the id's SHA-256 only, and which token opened it.
        stored = _rows(url, root)
        assert hashlib.sha256(value.encode()).hexdigest() in stored
        assert value not in stored and root not in str(stored)
    assert len(_rows(url, root)) == 2  # one session per sign-in
    # The old cookie held the token itself: it authenticates nothing any more.
    assert _cookie_works(base, "droptune_token", root) == 401
    with httpx.Client(base_url=base, cookies={"droptune_token": root}, headers=HTML) as old:
        to_login = old.get("/dashboard")
        assert to_login.status_code == 303 and to_login.headers["location"] == "/login"
    # A made-up session id is no session, nor a revoked or mistyped token; a non-admin's token
    # opens a session of its own (their dashboard shows their studies: tests/e2e/test_access.py).
    assert _cookie_works(base, "droptune_session", "x" * 43) == 401
    refused = _login(base, user + "x")
    assert refused.status_code == 401 and "set-cookie" not in refused.headers
    assert len(_rows(url, root)) == 2 and _rows(url, user) == {}
    theirs = _login(base, user)
    assert theirs.status_code == 303 and len(_rows(url, user)) == 1


def test_logout_ends_the_session_server_side(admin_server: tuple[str, str, str, str]) -> None:
    base, _url, root, _user = admin_server
    name, value, _line = _set_cookie(_login(base, root))
    assert _cookie_works(base, name, value) == 200
    with httpx.Client(base_url=base, cookies={name: value}) as browser:
        out = browser.get("/logout")
        assert out.status_code == 303 and out.headers["location"] == "/login"
        deleted = [v for v in out.headers.get_list("set-cookie") if v.startswith(f"{name}=")]
        assert deleted and "max-age=0" in deleted[0].lower()
    # The old cookie, replayed: refused (a browser is sent to the sign-in page).
    assert _cookie_works(base, name, value) == 401
    with httpx.Client(base_url=base, cookies={name: value}, headers=HTML) as replay:
        again = replay.get("/dashboard")
        assert again.status_code == 303 and again.headers["location"] == "/login"
    # The token itself still works: logging out of the dashboard does not revoke it.
    assert httpx.get(f"{base}/dashboard", headers=bearer(root)).status_code == 200


def test_revoking_the_token_ends_its_sessions(admin_server: tuple[str, str, str, str]) -> None:
    base, url, root, _user = admin_server
    name, value, _line = _set_cookie(_login(base, root))
    other = token(url, "root2", "--admin")  # another admin's session lives on
    name2, value2, _ = _set_cookie(_login(base, other))
    assert _cookie_works(base, name, value) == 200
    revoked = procs.cli("token", "revoke", root, env=procs._env(url, None))
    assert revoked.returncode == 0, revoked.stderr
    assert _cookie_works(base, name, value) == 401
    assert _cookie_works(base, name2, value2) == 200


def test_an_expired_session_is_refused(admin_server: tuple[str, str, str, str]) -> None:
    base, url, root, _user = admin_server
    name, value, line = _set_cookie(_login(base, root))
    assert "max-age=604800" in line.lower()  # 7 days, as the session row's expiry
    assert _cookie_works(base, name, value) == 200
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                tables.sessions.update()
                .where(tables.sessions.c.hash == hashlib.sha256(value.encode()).hexdigest())
                .values(expires_at=db_now(-60))
            )
    finally:
        engine.dispose()
    assert _cookie_works(base, name, value) == 401


def test_over_tls_the_cookie_is_host_prefixed_and_secure(
    admin_server: tuple[str, str, str, str],
) -> None:
    base, _url, root, _user = admin_server
    for r in (
        _login(base, root, TLS),
        httpx.get(f"{base}/dashboard", params={"token": root}, headers=TLS),
    ):
        assert r.status_code == 303, r.text
        name, value, line = _set_cookie(r)
        assert name == "__Host-droptune_session"
        low = line.lower()
        assert "; secure" in low and "path=/" in low and "domain" not in low
        assert "httponly" in low and "samesite=strict" in low
        assert _cookie_works(base, name, value, TLS) == 200
        # Only over TLS: the plain name does not stand in for it, nor it for the plain one.
        assert _cookie_works(base, "droptune_session", value, TLS) == 401
        assert _cookie_works(base, name, value) == 401
    with httpx.Client(base_url=base, cookies={name: value}, headers=TLS) as browser:
        out = browser.get("/logout")
        gone = [v for v in out.headers.get_list("set-cookie") if v.startswith(f"{name}=")]
        assert gone and "secure" in gone[0].lower()  # a __Host- cookie is deleted only so
    assert _cookie_works(base, name, value, TLS) == 401


def test_sessions_in_storage(db_url: str) -> None:
    """Both backends: open, identify, end; identify also checks the token, should a token be
    revoked without its sessions (a row written by hand, or by an older server)."""
    engine = create_engine(db_url)
    try:
        root = tokens.create(engine, "root", admin=True)
        user = tokens.create(engine, "carol")
        mine = sessions.start(engine, user, hours=1)  # any live token (issue 22)
        assert mine is not None and sessions.identify(engine, mine) == tokens.Identity(
            "carol", False
        )
        assert sessions.start(engine, "dt_unknown", hours=1) is None
        sid = sessions.start(engine, root, hours=1)
        assert sid is not None and root not in sid
        assert sessions.identify(engine, sid) == tokens.Identity("root", admin=True)
        assert sessions.identify(engine, root) is None  # the token is not a session id
        assert sessions.end(engine, sid) is True
        assert sessions.identify(engine, sid) is None
        assert sessions.end(engine, sid) is False
        expired = sessions.start(engine, root, hours=-1)
        assert expired is not None and sessions.identify(engine, expired) is None
        live = sessions.start(engine, root, hours=1)
        assert live is not None
        with engine.begin() as conn:  # the token revoked behind the sessions' back
            conn.execute(tables.tokens.update().values(revoked_at=sa.func.now()))
        assert sessions.identify(engine, live) is None
    finally:
        engine.dispose()


MALFORMED_HOSTS = (
    "localhost:{port}@evil.example",
    "evil.example@localhost:{port}",
    "user:pass@localhost:{port}",
    "localhost:{port}/x",
    "local host:{port}",
    "localhost:{port}:{port}",
    "",
    "localhost:0",
    "localhost:99999",
    "localhost:8a",
    ":{port}",
    "[::1",
    "[::1]x",
    "[evil.example]:{port}",
    "::1",
    "localhost\\evil.example",
    "localhost%2f",
)


def test_malformed_host_values_are_refused(admin_server: tuple[str, str, str, str]) -> None:
    base, _url, root, _user = admin_server
    port = base.rsplit(":", 1)[1]
    passed = []
    for host in MALFORMED_HOSTS:
        value = host.format(port=port)
        r = httpx.get(f"{base}/studies", headers={"Host": value, **bearer(root)})
        if r.status_code != 400 or "malformed Host" not in r.text:
            passed.append((value, r.status_code))
            continue
        assert r.headers["content-type"] == "application/problem+json"
        assert repr(value) in r.json()["detail"]
    assert passed == []


def test_well_formed_hosts_still_pass(admin_server: tuple[str, str, str, str]) -> None:
    base, _url, root, _user = admin_server
    port = base.rsplit(":", 1)[1]
    for value in ("localhost", f"localhost:{port}", f"LOCALHOST:{port}", "127.0.0.1", "[::1]"):
        r = httpx.get(f"{base}/studies", headers={"Host": value, **bearer(root)})
        assert r.status_code == 200, (value, r.text)
    r = httpx.get(f"{base}/studies", headers={"Host": f"[::1]:{port}", **bearer(root)})
    assert r.status_code == 200
    unknown = httpx.get(f"{base}/studies", headers={"Host": "attacker.example", **bearer(root)})
    assert unknown.status_code == 400 and "DROPTUNE_ALLOWED_HOSTS" in unknown.json()["detail"]
    # Well formed though unknown here (a Compose service name; an empty port, RFC 3986): not
    # "malformed", so DROPTUNE_ALLOWED_HOSTS can name them.
    for value in ("droptune_api:8000", "localhost:"):
        r = httpx.get(f"{base}/studies", headers={"Host": value, **bearer(root)})
        assert r.status_code in (200, 400) and "malformed" not in r.text, (value, r.text)
