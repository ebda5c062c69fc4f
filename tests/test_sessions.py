"""The Host check over a real server: a malformed Host header is refused with 400."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import procs
from tests.test_access import bearer, token


@pytest.fixture
def admin_server(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[str, str, str, str]]:
    """A real server with tokens created before it starts (no open-mode window): (base URL,
    database URL, an admin's token, a non-admin's token). Uvicorn trusts X-Forwarded-Proto
    from FORWARDED_ALLOW_IPS, set here to this machine, as behind a local TLS proxy."""
    root, user = token(sqlite_url, "root", "--admin"), token(sqlite_url, "carol")
    port = procs.free_port()
    extra = {"FORWARDED_ALLOW_IPS": "127.0.0.1"}
    api = procs.serve(sqlite_url, port, tmp_path / "serve.log", extra)
    try:
        yield f"http://127.0.0.1:{port}", sqlite_url, root, user
    finally:
        procs.stop(api)


MALFORMED_HOSTS = (
    "localhost:{port}@evil.example",
    "evil.example@localhost:{port}",
    "user:pass@localhost:{port}",
    "localhost:{port}/x",
    "local host:{port}",
    "localhost:{port}:{port}",
    "",
    "localhost:",
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
