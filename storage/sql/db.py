"""Engines, the one transaction helper, and the database clock."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from droptune.core.errors import Invalid, StorageError
from droptune.core.escape import masked_url
from droptune.core.settings import StorageSettings

log = logging.getLogger("droptune.storage")

# Below half the default lease grace (30 s): a heartbeat that waits out the lock still lands
# before its lease could be taken for stale.
SQLITE_BUSY_TIMEOUT_S = 12.0


# The largest id an INTEGER column holds on PostgreSQL (SQLite's are 64-bit).
MAX_ID = 2**31 - 1


class Id(sa.types.TypeDecorator[int]):
    """An id column (INTEGER). An id past what the column holds names no row: bound as -1
    (ids start at 1), a lookup finds nothing and answers "not found", where PostgreSQL would
    refuse the statement (`integer out of range`, a 500). Ids come from the database, so no
    row is ever written with one out of range."""

    impl = sa.Integer
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: sa.Dialect) -> int | None:
        if value is not None and not -MAX_ID <= value <= MAX_ID:
            return -1
        return value


def is_sqlite(url: str | sa.URL) -> bool:
    return sa.make_url(url).get_backend_name() == "sqlite"


def normalise_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` and use psycopg 3, the driver we install."""
    try:
        u = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise Invalid(f"database URL {masked_url(url)!r} is not a URL: {exc}") from exc
    if u.get_backend_name() not in ("sqlite", "postgresql"):
        shown = masked_url(url)
        raise Invalid(f"database URL {shown!r}: droptune supports sqlite:// and postgresql:// only")
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def engine_kwargs(url: str) -> dict[str, Any]:
    """Keyword arguments for create_engine, shared with Optuna's RDBStorage.
    DROPTUNE_PG_PREPARED_STATEMENTS=false turns psycopg's prepared statements off (PgBouncer)."""
    if is_sqlite(url):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    kw: dict[str, Any] = {
        "pool_pre_ping": True,
        "pool_size": 4,
        "max_overflow": 4,
        "pool_recycle": 1800,
    }
    if not StorageSettings().pg_prepared_statements:
        kw["connect_args"] = {"prepare_threshold": None}
    return kw


def create_engine(url: str) -> Engine:
    url = normalise_url(url)
    engine = sa.create_engine(url, **engine_kwargs(url))
    if is_sqlite(url):
        configure_sqlite(engine)
    return engine


def configure_sqlite(engine: Engine) -> None:
    """WAL, a busy timeout, and every transaction opened with BEGIN IMMEDIATE.

    pysqlite on its own runs a SELECT outside any transaction and opens one only at the first
    write, so "read a row, check it, update it" is not atomic. Taking BEGIN over makes every
    transaction hold the write lock from its first statement (read-only ones say plain BEGIN);
    writers queue on the busy timeout instead of failing mid-transaction.
    Applied to droptune's engines and to Optuna's (see storage.optuna_bridge).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.info.pop("sqlite_begin", "BEGIN IMMEDIATE")
        conn.exec_driver_sql(mode)


UNREACHABLE = "the database is unreachable"

# SQLite's primary result codes that say the file, its lock or the disk failed, not the
# statement; SQLITE_ERROR (1), which also means "no such table" or a syntax error, is not here.
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13
_SQLITE_OUTAGE = {_SQLITE_BUSY, _SQLITE_LOCKED, 7, 8, 9, 10, 11, _SQLITE_FULL, 14, 15, 26}

# PostgreSQL's errors that reach a live server's client as OperationalError, by SQLSTATE prefix;
# any other (no SQLSTATE: the connection itself failed) reads as unreachable.
_PG_OUTAGES = (
    ("40", "the database aborted the transaction in a conflict (deadlock or serialization)"),
    ("53", "the database is out of resources (connections, memory or disk)"),
    ("55P03", "the database could not take a lock in time"),
    ("57014", "the database cancelled the statement (a timeout)"),
)


def outage(exc: BaseException) -> str | None:
    """What to tell a client when `exc` says the database could not be used (unreachable, locked,
    out of connections), or None when it is anything else: a bug or a broken constraint.

    The text never repeats the driver's message, which can name the host, port and database.
    """
    if isinstance(exc, sa.exc.TimeoutError):  # the pool: every connection stayed checked out
        return "no database connection came free in time"
    if isinstance(exc, sa.exc.DisconnectionError):
        return UNREACHABLE
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        # pysqlite raises OperationalError for bad SQL too: the result code tells them apart.
        code &= 0xFF  # the primary code of an extended one (SQLITE_BUSY_SNAPSHOT, ...)
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return "the database is locked by another writer"
        if code == _SQLITE_FULL:
            return "the database's disk is full"
        return UNREACHABLE if code in _SQLITE_OUTAGE else None
    if exc.connection_invalidated or isinstance(
        exc, (sa.exc.OperationalError, sa.exc.InterfaceError)
    ):
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")  # PostgreSQL's error code
        return next((d for s, d in _PG_OUTAGES if sqlstate.startswith(s)), UNREACHABLE)
    return None


def is_outage(exc: BaseException) -> bool:
    """Whether an error means the database could not be used (retry later), not a bug: a
    StorageError, an outage SQLAlchemy reports, or Optuna's StorageInternalError over one."""
    if isinstance(exc, StorageError):
        return True
    if type(exc).__name__ == "StorageInternalError":  # Optuna's wrapper: its cause decides
        return exc.__cause__ is None or is_outage(exc.__cause__)
    return outage(exc) is not None


def driver_message(exc: BaseException) -> str:
    """The first line of the driver's message (for the log: it may name the host)."""
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


@contextlib.contextmanager
def transaction(engine: Engine, *, read_only: bool = False) -> Iterator[Connection]:
    """Commit on exit, roll back on error, always close.

    Only an outage (see `outage`) becomes StorageError, which callers retry and the API answers
    503; every other error propagates unchanged. A bug (bad SQL, `.one()` finding nothing) is
    not worth retrying, and an IntegrityError is for the caller that expects a race to catch.

    On SQLite every write transaction starts with BEGIN IMMEDIATE, so it holds the write lock from
    its first statement: a read followed by a write inside it cannot interleave with another writer.
    """
    try:
        with engine.connect() as conn:
            if read_only:
                conn.info["sqlite_begin"] = "BEGIN"
            with conn.begin():
                yield conn
    except (sa.exc.DBAPIError, sa.exc.TimeoutError, sa.exc.DisconnectionError) as exc:
        detail = outage(exc)
        if detail is None:
            raise
        # The driver's own words, which may name the host, go to the log only.
        log.warning("database unavailable: %s: %s", type(exc).__name__, driver_message(exc))
        raise StorageError(detail) from exc


class db_now(FunctionElement[Any]):
    """The database's clock as a naive UTC timestamp, shifted by `seconds` (a bound parameter).

    Every lease and staleness check compares against this, never a worker's clock.
    """

    type = sa.DateTime()
    inherit_cache = True

    def __init__(self, seconds: float = 0.0) -> None:
        super().__init__(sa.literal(float(seconds), sa.Float()))


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    # Microsecond digits, as SQLAlchemy writes datetimes, so stored values compare as strings.
    shift = compiler.process(element.clauses, **kw)
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now', printf('%+.3f seconds', {shift})) || '000')"


@compiles(db_now, "postgresql")
def _db_now_pg(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    shift = compiler.process(element.clauses, **kw)
    return f"(clock_timestamp() AT TIME ZONE 'UTC' + make_interval(secs => {shift}))"


def ping(engine: Engine) -> str:
    """The database's kind once it has answered a trivial query (StorageError if it cannot)."""
    with transaction(engine, read_only=True) as conn:
        conn.execute(sa.text("SELECT 1"))
    return engine.dialect.name
