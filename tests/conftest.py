"""Fixtures: a fresh migrated database per test, on SQLite (a temp file) and on PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import torch

from droptune.storage.sql.migrate import upgrade

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
BACKENDS = ["sqlite", "postgres"]

# The suite runs several test processes, each with servers and workers of its own, on a 2-core
# machine: one compute thread each, here and in every process a test starts (the workers are
# given DROPTUNE_THREADS=1 too, tests/procs.py). Idle OpenMP and BLAS threads spin-waiting cost
# 13% of the CPU of test_sampler.py and test_worker.py run alone (59.7 s against 52.0 s).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
torch.set_num_threads(1)


def pg_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


class Copies:
    """Databases copied from the template one ahead, and dropped, in threads of their own.

    A copy takes ~0.3 s (PostgreSQL writes and flushes the copied pages) and so does a drop;
    about 250 tests take one each, so the next copy is made while a test runs, and a test's
    database is dropped while the next one runs.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-copies")
        self.dropper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-drops")
        self.ahead = self.thread.submit(self._create)
        self.dropping: list[Future[None]] = []

    def _create(self) -> str:
        name = f"droptune_t_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name

    def take(self) -> str:
        try:
            name = self.ahead.result()
        except psycopg.Error:  # made while PostgreSQL restarted (the serial test): again, now
            name = self._create()
        self.ahead = self.thread.submit(self._create)
        return name

    def drop(self, name: str) -> None:
        self.dropping.append(self.dropper.submit(_drop, name))

    def close(self) -> None:
        """Drop the copy made ahead; wait for every drop; raise the first that failed."""
        with contextlib.suppress(psycopg.Error):
            self.drop(self.ahead.result())
        self.thread.shutdown(wait=True)
        self.dropper.shutdown(wait=True)
        failed = [e for done in self.dropping if (e := done.exception()) is not None]
        if failed:
            raise failed[0]


@pytest.fixture(scope="session")
def pg_copies() -> Iterator[Copies]:
    """A migrated template database, copied for each test (CREATE DATABASE … TEMPLATE)."""
    if not pg_available():
        why = "no PostgreSQL server reachable on 127.0.0.1:5432"
        if os.environ.get("CI") or os.environ.get("DROPTUNE_REQUIRE_POSTGRES"):
            pytest.fail(f"{why}: CI runs every PostgreSQL test (start it: see .ci/run)")
        pytest.skip(why)
    name = f"droptune_tpl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(PG_URL.format(db=name))
    copies = Copies(name)
    try:
        yield copies
    finally:
        try:
            copies.close()
        finally:
            _drop(name)


def _drop(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_copies: Copies) -> Iterator[str]:
    name = pg_copies.take()
    yield PG_URL.format(db=name)
    pg_copies.drop(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating one costs ~0.2 s of CPU, and
    ~300 tests take one)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "droptune.db"
    upgrade(f"sqlite:///{path}")
    leftovers = [p.name for p in path.parent.iterdir() if p != path]
    assert not leftovers, f"the migrated template left {leftovers} beside it (WAL not closed?)"
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "droptune.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    """Every storage test runs on both backends."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


SERIAL_HOME = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` runs the serial tests from tests/e2e alone (collecting only that folder saves
    its critical path seconds): one marked serial elsewhere would never run, so it is an error."""
    astray = [
        i.nodeid
        for i in items
        if i.get_closest_marker("serial") and SERIAL_HOME not in i.path.parents
    ]
    if astray:
        raise pytest.UsageError(
            f"serial tests belong in tests/e2e (make test runs them there): {astray}"
        )
