"""The migrations build exactly the tables that storage/sql/tables.py declares, on both backends.

The code queries what tables.py declares, but every database gets its tables from the
migrations: a column, type, default or index changed in one and not the other fails here.
"""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from droptune.storage.sql.db import create_engine
from droptune.storage.sql.tables import metadata

# As storage/sql/migrations/env.py configures Alembic (its module runs the migrations on import, so
# it cannot be imported here): Optuna's tables share the database and are none of ours.
VERSION_TABLE = "droptune_alembic_version"


def ours(name: str | None, type_: str, _parent: Any) -> bool:
    return type_ != "table" or bool(name and name.startswith("droptune_"))


def defaults_differ(
    _context: MigrationContext,
    _db_column: Any,
    _column: Any,
    db_default: str | None,
    default: Any,
    _rendered: str | None,
) -> bool:
    """Whether a column's server default in the database is not the one tables.py declares.

    Each database hands back its own spelling of a default (SQLite keeps the parentheses it was
    written with, PostgreSQL adds casts and rewrites db_now()'s SQL), which Alembic's own
    comparison reports as changes. So a literal default is compared by its bare value and an
    expression by its presence: enough to catch a migration that forgot one.
    """
    if db_default is None or default is None:
        return (db_default is None) != (default is None)
    literal = getattr(default, "arg", None)
    return isinstance(literal, str) and bare(db_default) != bare(literal)


def bare(sql: str) -> str:
    return sql.split("::")[0].strip("()' ")


def test_migrated_database_matches_the_tables(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "version_table": VERSION_TABLE,
                    "include_name": ours,
                    "compare_type": True,
                    "compare_server_default": defaults_differ,
                },
            )
            diff = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert diff == []
