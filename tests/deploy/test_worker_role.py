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


def _run(
    url: str, role: str, password: str, keda: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPTUNE_")}
    env |= {
        "DROPTUNE_DATABASE_URL": url,
        "DROPTUNE_WORKER_ROLE": role,
        "DROPTUNE_WORKER_PASSWORD": password,
        **(keda or {}),
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
        conn.execute("UPDATE droptune_studies SET n_done = n_done WHERE false")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT hash FROM droptune_tokens")
    for sql in (
        "UPDATE droptune_alembic_version SET version_num = version_num",
        # a study handed to another owner, or a data set rewritten (an outside attack)
        "UPDATE droptune_studies SET owner = 'mallory' WHERE false",
        "UPDATE droptune_datasets SET owner = 'mallory' WHERE false",
        "DELETE FROM droptune_studies WHERE false",
    ):
        with psycopg.connect(as_role) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.encode())
    with psycopg.connect(as_role) as conn:  # what the queue moves stays writable
        conn.execute("UPDATE droptune_studies SET status = status, answer = answer WHERE false")
    # a session row would be an admin's cookie (an outside review found the role could write one)
    with psycopg.connect(as_role) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(
            "INSERT INTO droptune_sessions (hash, token_id, expires_at) VALUES ('x', 1, now())"
        )
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


def test_kedas_role_reads_the_depth_queries_columns_and_nothing_else(
    pg_url: str, role: str
) -> None:
    """KEDA's operator (another namespace) holds this password: it runs depth_sql() and
    busy_sql() and can read no spec, data set or token, and write nothing."""
    from droptune.storage.jobs.depth import busy_sql, depth_sql

    keda = f"{role}_keda"
    try:
        done = _run(
            pg_url,
            role,
            "a-long-password-1",
            {"DROPTUNE_KEDA_ROLE": keda, "DROPTUNE_KEDA_PASSWORD": "another-long-one"},
        )
        assert done.returncode == 0, done.stderr
        assert f"{keda} created" in done.stdout
        user = pg_url.split("//", 1)[1].split("@", 1)[0]
        as_keda = pg_url.replace("+psycopg", "").replace(f"//{user}@", f"//{keda}:x@", 1)
        with psycopg.connect(as_keda) as conn:
            assert conn.execute(depth_sql().encode()).fetchone() == (0,)
            assert conn.execute(busy_sql().encode()).fetchone() == (0,)
            for sql in (
                "SELECT spec FROM droptune_studies",
                "SELECT count(*) FROM droptune_datasets",
                "UPDATE droptune_studies SET priority = 0 WHERE false",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                    conn.execute(sql.encode())
    finally:
        db = pg_url.rsplit("/", 1)[1]
        with psycopg.connect(f"{PG_ADMIN.rsplit('/', 1)[0]}/{db}", autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [keda]).fetchone():
                conn.execute(f'DROP OWNED BY "{keda}"'.encode())
                conn.execute(f'DROP ROLE "{keda}"'.encode())


def test_db_upgrade_prints_the_url_with_its_password_masked(pg_url: str) -> None:
    """The API's first init container runs it: its line lands in `kubectl logs` (review)."""
    # a `/` in it: a URL parser reads the rest as the path (an outside attack printed it so)
    with_password = pg_url.replace("//postgres@", "//postgres:hunter2/secret@", 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPTUNE_")}
    argv = ["db", "upgrade", "--database-url", with_password]
    done = subprocess.run(
        [sys.executable, "-m", "droptune.client.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    assert "postgres:***@127.0.0.1" in done.stdout and "is up to date" in done.stdout
