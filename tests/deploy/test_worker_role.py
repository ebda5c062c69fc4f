"""deploy/k8s/base/worker-role.py (the API's init container): the README's worker role, created
and granted on a real PostgreSQL, again on every start, refused with the placeholder password."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PG_ADMIN

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "k8s" / "base" / "worker-role.py"

pytestmark = pytest.mark.postgres


def _load_statements() -> object:
    namespace: dict[str, object] = {"__name__": "worker_role"}
    exec(compile(SCRIPT.read_text(), str(SCRIPT), "exec"), namespace)
    return namespace["statements"]


def _readme_statements() -> list[str]:
    block = (ROOT / "README.md").read_text().split("<!-- worker-role -->")[1]
    found = re.search(r"```sql\n(.*?)```", block, re.S)
    assert found, "the README's worker-role block has no SQL"
    return [" ".join(s.split()) for s in found.group(1).split(";") if s.strip()]


def test_the_script_runs_the_readme_sql() -> None:
    statements = _load_statements()
    assert callable(statements)
    assert statements("droptune_worker", "change-me") == _readme_statements()


def _run(url: str, role: str, password: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPTUNE_")}
    env |= {
        "DROPTUNE_DATABASE_URL": url,
        "DROPTUNE_WORKER_ROLE": role,
        "DROPTUNE_WORKER_PASSWORD": password,
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def role(pg_url: str) -> Iterator[str]:
    """A role name of this test's own (roles are the server's, shared by parallel tests)."""
    name = f"droptune_worker_{uuid.uuid4().hex[:8]}"
    yield name
    db = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(f"{PG_ADMIN.rsplit('/', 1)[0]}/{db}", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone():
            conn.execute(f'DROP OWNED BY "{name}"'.encode())
            conn.execute(f'DROP ROLE "{name}"'.encode())


def test_the_role_runs_studies_and_cannot_read_tokens(pg_url: str, role: str) -> None:
    first = _run(pg_url, role, "a-long-password-1")
    assert first.returncode == 0, first.stderr
    assert f"{role} created" in first.stdout
    again = _run(pg_url, role, "a-long-password-2")  # every start: idempotent
    assert again.returncode == 0, again.stderr
    assert f"{role} updated" in again.stdout
    user = pg_url.split("//", 1)[1].split("@", 1)[0]
    as_role = pg_url.replace("+psycopg", "").replace(f"//{user}@", f"//{role}:x@", 1)
    with psycopg.connect(as_role) as conn:
        conn.execute("SELECT count(*) FROM droptune_studies").fetchone()
        conn.execute("UPDATE droptune_studies SET priority = priority WHERE false")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT hash FROM droptune_tokens")
    with psycopg.connect(pg_url.replace("+psycopg", "")) as conn:
        row = conn.execute(
            "SELECT rolcanlogin, rolpassword IS NOT NULL FROM pg_authid WHERE rolname = %s",
            [role],
        ).fetchone()
    assert row == (True, True)


@pytest.mark.parametrize("password", ["REPLACE-ME", "short"])
def test_the_placeholder_password_is_refused(pg_url: str, role: str, password: str) -> None:
    done = _run(pg_url, role, password)
    assert done.returncode == 1
    assert "DROPTUNE_WORKER_PASSWORD" in done.stderr
    with psycopg.connect(pg_url.replace("+psycopg", "")) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() is None
