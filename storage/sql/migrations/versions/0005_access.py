"""Accounts and access: API tokens, idempotent submits, and what a worker advertises; the
custom model a study needs (a worker claims only studies whose model it has).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from droptune.storage.sql.db import db_now

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "droptune_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("owner", sa.String(200), nullable=False, index=True),
        sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=db_now()),
        sa.Column("revoked_at", sa.DateTime, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "droptune_idempotency",
        sa.Column("owner", sa.String(200), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("study_id", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=db_now()),
    )
    with op.batch_alter_table("droptune_workers") as batch:
        batch.add_column(sa.Column("memory_bytes", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("models", sa.JSON, nullable=True))
    with op.batch_alter_table("droptune_studies") as batch:
        batch.add_column(sa.Column("custom_model", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("droptune_studies") as batch:
        batch.drop_column("custom_model")
    with op.batch_alter_table("droptune_workers") as batch:
        batch.drop_column("models")
        batch.drop_column("memory_bytes")
    op.drop_table("droptune_idempotency")
    op.drop_table("droptune_tokens")
