"""Which database errors are outages (StorageError, 503) and which are bugs (unchanged, 500):
`transaction()` on real SQLite and PostgreSQL databases, and the API in-process."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from optuna.exceptions import StorageInternalError
from sqlalchemy import orm
from sqlalchemy.engine import Connection

import droptune.storage.sql.db
from droptune.core.errors import StorageError
from droptune.service.app import create_app
from droptune.service.settings import ServiceSettings
from droptune.storage import datasets as store
from droptune.storage.readmodel.reads import Reader
from droptune.storage.sql.db import UNREACHABLE, create_engine, outage, transaction
from droptune.storage.sql.tables import datasets, workers
from tests import datafiles

PROBLEM = "application/problem+json"
NOWHERE = "postgresql+psycopg://postgres@127.0.0.1:1/droptune_nowhere"
# What a 503 or 500 body must never carry: the database's address, SQL, code paths.
LEAKS = ("127.0.0.1", "5432", "port", "droptune_nowhere", "SELECT", "Traceback", 'File "', ".py")


def add_worker(conn: Connection, worker_id: str = "w1") -> None:
    conn.execute(
        workers.insert().values(id=worker_id, host="h", pid=1, device="cpu", status="live")
    )


def _no_row(conn: Connection) -> None:
    conn.execute(sa.select(workers.c.id).where(workers.c.id == "nobody")).one()


def _two_rows(conn: Connection) -> None:
    add_worker(conn, "w2")
    conn.execute(sa.select(workers.c.id)).scalar_one()


def _bad_sql(conn: Connection) -> None:
    conn.execute(sa.text("SELEC id FROM droptune_workers"))


def _no_table(conn: Connection) -> None:
    conn.execute(sa.text("SELECT id FROM droptune_no_such_table"))


def _no_column(conn: Connection) -> None:
    conn.execute(sa.text("SELECT no_such_column FROM droptune_workers"))


def _missing_parameter(conn: Connection) -> None:
    conn.execute(sa.text("SELECT id FROM droptune_workers WHERE id = :id"))


def _compile_error(conn: Connection) -> None:
    raise sa.exc.CompileError("forced: this construct cannot be compiled")


BUGS: list[tuple[Callable[[Connection], None], type[Exception]]] = [
    (_no_row, sa.exc.NoResultFound),
    (_two_rows, sa.exc.MultipleResultsFound),
    # ProgrammingError on PostgreSQL; OperationalError (SQLITE_ERROR) on SQLite.
    (_bad_sql, sa.exc.DBAPIError),
    (_no_table, sa.exc.DBAPIError),
    (_no_column, sa.exc.DBAPIError),
    (_missing_parameter, sa.exc.StatementError),
    (_compile_error, sa.exc.CompileError),
]


@pytest.mark.parametrize(("bug", "kind"), BUGS, ids=[f.__name__.strip("_") for f, _ in BUGS])
def test_a_programming_error_propagates_unchanged_and_rolls_back(
    db_url: str, bug: Callable[[Connection], None], kind: type[Exception]
) -> None:
    engine = create_engine(db_url)
    try:
        with pytest.raises(kind) as raised, transaction(engine) as conn:
            add_worker(conn)
            bug(conn)
        assert not isinstance(raised.value, StorageError)
        assert outage(raised.value) is None
        with transaction(engine, read_only=True) as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(workers)).scalar() == 0
    finally:
        engine.dispose()


def test_a_broken_constraint_propagates_as_integrity_error(db_url: str) -> None:
    """Neither an outage nor always a bug: the caller that expects the race catches it."""
    engine = create_engine(db_url)
    try:
        with transaction(engine) as conn:
            add_worker(conn)
        with pytest.raises(sa.exc.IntegrityError), transaction(engine) as conn:
            add_worker(conn)
    finally:
        engine.dispose()


def test_an_unreachable_postgresql_is_a_storage_error_naming_no_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = create_engine(NOWHERE)
    try:
        with (
            caplog.at_level(logging.WARNING, "droptune.storage"),
            pytest.raises(StorageError) as raised,
            transaction(engine, read_only=True) as conn,
        ):
            conn.execute(sa.select(1))
    finally:
        engine.dispose()
    assert raised.value.detail == UNREACHABLE and raised.value.status == 503
    assert not any(leak in str(raised.value) for leak in LEAKS), str(raised.value)
    assert isinstance(raised.value.__cause__, sa.exc.OperationalError)
    assert "port 1" in caplog.text  # the operator still sees where it tried


def test_a_locked_sqlite_database_is_a_storage_error(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = sa.make_url(sqlite_url).database
    assert path is not None
    monkeypatch.setattr(
        droptune.storage.sql.db, "SQLITE_BUSY_TIMEOUT_S", 0.1
    )  # not 12 s of waiting
    engine = create_engine(sqlite_url)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageError, match="locked") as raised, transaction(engine) as conn:
            add_worker(conn)
        assert path not in str(raised.value)
    finally:
        holder.close()
        engine.dispose()


def test_a_missing_sqlite_directory_is_a_storage_error(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'no_such_dir' / 'droptune.db'}")
    try:
        with pytest.raises(StorageError) as raised, transaction(engine) as conn:
            conn.execute(sa.select(1))
    finally:
        engine.dispose()
    assert raised.value.detail == UNREACHABLE and str(tmp_path) not in str(raised.value)


def test_the_pool_running_dry_is_a_storage_error(sqlite_url: str) -> None:
    engine = sa.create_engine(
        sqlite_url, poolclass=sa.QueuePool, pool_size=1, max_overflow=0, pool_timeout=0.1
    )
    try:
        with (
            engine.connect(),
            pytest.raises(StorageError, match="came free"),
            transaction(engine, read_only=True),
        ):
            pass
    finally:
        engine.dispose()


def test_a_lost_upload_race_answers_the_stored_data_set(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two uploads of the same bytes: the second did not see the first's record (not yet
    committed, on PostgreSQL), so its insert breaks the unique constraint; it answers that one."""
    csv = datafiles.cancer_csv(tmp_path / "cancer.csv")
    app = create_app(ServiceSettings(database_url=db_url))
    with TestClient(app, base_url="http://localhost") as api:

        def upload() -> Any:
            with csv.open("rb") as f:
                return api.post(
                    "/datasets", files={"file": (csv.name, f)}, data={"target": "target"}
                )

        first = upload()
        assert first.status_code == 201, first.text
        real = store._matching
        blind = [2]  # create() looks twice (as asked, as read); find() afterwards sees the row

        def late(*a: Any, **k: Any) -> Any:
            if blind[0]:
                blind[0] -= 1
                return None
            return real(*a, **k)

        monkeypatch.setattr(store, "_matching", late)
        second = upload()
    assert second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"] and blind == [0]
    engine = create_engine(db_url)
    try:
        with transaction(engine, read_only=True) as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(datasets)).scalar() == 1
    finally:
        engine.dispose()


@pytest.fixture
def api(sqlite_url: str) -> Iterator[TestClient]:
    app = create_app(ServiceSettings(database_url=sqlite_url))
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as client:
        yield client


def assert_clean(body: dict[str, Any], *extra: str) -> None:
    text = str(body)
    assert not any(leak in text for leak in (*LEAKS, *extra)), text


def _raise_no_row(self: Reader, *a: Any) -> None:
    raise sa.exc.NoResultFound("No row was found when one was required")


def _run_bad_sql(self: Reader, *a: Any) -> None:
    with transaction(self.engine, read_only=True) as conn:
        conn.execute(sa.text("SELECT secret_column FROM droptune_studies WHERE owner = 'x'"))


@pytest.mark.parametrize("fault", [_raise_no_row, _run_bad_sql], ids=["no_row", "bad_sql"])
def test_a_bug_in_a_storage_read_is_a_500_problem_without_internals(
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fault: Callable[..., None],
) -> None:
    monkeypatch.setattr(Reader, "page", fault)
    app = create_app(ServiceSettings(database_url=db_url))
    with (
        caplog.at_level(logging.ERROR, "droptune.api"),
        TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as client,
    ):
        r = client.get("/studies")
    assert r.status_code == 500 and r.headers["content-type"] == PROBLEM, r.text
    body = r.json()
    assert body["title"] == "Internal error" and body["status"] == 500
    assert_clean(body, "secret_column", "droptune_studies", sa.make_url(db_url).database or "")
    logged = [rec for rec in caplog.records if rec.name == "droptune.api" and rec.exc_info]
    assert logged and "GET /studies" in logged[0].getMessage()


def test_reads_do_not_need_optunas_storage(api: TestClient) -> None:
    """The API's reads come from droptune's tables and SQL over Optuna's (storage.reads): an
    Optuna storage whose database went away does not break them."""
    r = api.post("/studies", json={"dataset": {"builtin": "digits"}, "search": {"n_trials": 2}})
    assert r.status_code == 201, r.text
    optuna = api.app.state.optuna_read  # type: ignore[attr-defined]
    gone = sa.create_engine(NOWHERE)
    optuna.engine.dispose()
    optuna.engine = gone
    optuna.scoped_session = orm.scoped_session(orm.sessionmaker(bind=gone))
    for path in ("", "/best", "/trials", "/curve"):
        got = api.get(f"/studies/{r.json()['id']}{path}")
        assert got.status_code == 200, (path, got.text)


def test_a_bare_storage_internal_error_is_a_503_problem(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def hiccup(self: Reader, *a: Any) -> None:
        raise StorageInternalError("simulated")

    monkeypatch.setattr(Reader, "page", hiccup)
    r = api.get("/studies")
    assert r.status_code == 503 and r.headers["content-type"] == PROBLEM, r.text
    assert r.json()["detail"] == UNREACHABLE


def test_a_storage_internal_error_from_bad_sql_is_a_500_problem(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna wraps a ProgrammingError the same way: that is a bug, not an outage."""

    def bad(self: Reader, *a: Any) -> None:
        cause = sa.exc.ProgrammingError("SELECT nope FROM trials", {}, Exception("syntax error"))
        raise StorageInternalError("An exception is raised during the commit.") from cause

    monkeypatch.setattr(Reader, "page", bad)
    r = api.get("/studies")
    assert r.status_code == 500 and r.headers["content-type"] == PROBLEM, r.text
    assert_clean(r.json(), "nope")
