"""Alembic environment: droptune's tables only, versioned apart from Optuna's `alembic_version`."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from droptune.storage.sql.tables import metadata

VERSION_TABLE = "droptune_alembic_version"


def run_migrations_online() -> None:
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # Optuna's tables live in the same database: never touch them.
        include_name=lambda name, type_, _parent: (
            type_ != "table" or bool(name and name.startswith("droptune_"))
        ),
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several processes start at once (API, workers); one migrates, the others wait.
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(7461234)"))
        context.run_migrations()


run_migrations_online()
