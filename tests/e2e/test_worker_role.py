"""The README's database role for workers: it runs studies, and cannot read the tokens."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from droptune.client import Client
from tests import procs
from tests.conftest import PG_ADMIN

ROOT = Path(__file__).resolve().parents[2]
SMALL = {
    "dataset": {"builtin": "iris"},
    "model": {"hidden": [8]},
    "training": {"epochs": 2},
    "cv": {"folds": 3},
    "search": {"n_trials": 3},
}


def readme_sql() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- worker-role -->")[1]
    found = re.search(r"```sql\n(.*?)```", block, re.S)
    assert found, "the README's worker-role block has no SQL"
    return found.group(1)


@pytest.fixture
def worker_role(pg_url: str) -> Iterator[str]:
    """The README's role (under a name of this test's own) on the test database: its URL."""
    role = f"droptune_worker_{uuid.uuid4().hex[:8]}"
    sql = readme_sql().replace("droptune_worker", role)
    db = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(f"{PG_ADMIN.rsplit('/', 1)[0]}/{db}", autocommit=True) as conn:
        for statement in filter(str.strip, sql.split(";")):
            conn.execute(statement)
    user = pg_url.split("//", 1)[1].split("@", 1)[0]
    try:
        yield pg_url.replace(f"//{user}@", f"//{role}:change-me@", 1)
    finally:
        with psycopg.connect(f"{PG_ADMIN.rsplit('/', 1)[0]}/{db}", autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP ROLE "{role}"')


def test_a_worker_on_the_readme_role_runs_studies_and_cannot_read_tokens(
    pg_url: str, worker_role: str, tmp_path: Path
) -> None:
    with (
        psycopg.connect(worker_role.replace("+psycopg", "")) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT hash FROM droptune_tokens")
    port = procs.free_port()
    api = procs.serve(pg_url, port, tmp_path / "serve.log")
    work = procs.worker(worker_role, tmp_path / "worker.log")
    try:
        with Client(f"http://127.0.0.1:{port}") as c:
            study = c.submit(SMALL)
            best = c.best(study.id, wait=120)
            assert best.status == "succeeded", (tmp_path / "worker.log").read_text()[-2000:]
            assert len(c.trials(study.id)) == 3
    finally:
        assert procs.stop(work) == 0, (tmp_path / "worker.log").read_text()[-2000:]
        procs.stop(api)
