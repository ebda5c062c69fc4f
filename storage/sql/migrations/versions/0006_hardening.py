"""Hardening: dashboard sessions (a random id stored hashed, never the API token) and the bytes
a data set takes once decompressed (what the dataset quota counts).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from droptune.storage.sql.db import db_now

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "droptune_sessions",
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("token_id", sa.Integer, nullable=False, index=True),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=db_now()),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        sa.Column("revoked_at", sa.DateTime, nullable=True),
    )
    with op.batch_alter_table("droptune_datasets") as batch:
        batch.add_column(sa.Column("held_bytes", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("droptune_datasets") as batch:
        batch.drop_column("held_bytes")
    op.drop_table("droptune_sessions")
