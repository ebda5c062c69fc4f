"""droptune's tables: studies (the queue), leases, retries, workers.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from droptune.storage.sql.db import db_now

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    _studies()
    _leases()
    _retries()
    _workers()


def _studies() -> None:
    op.create_table(
        "droptune_studies",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("owner", sa.String(200), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("n_trials", sa.Integer, nullable=False),
        sa.Column("max_retries", sa.Integer, nullable=False),
        sa.Column("max_failed", sa.Integer, nullable=False),
        sa.Column("slots_claimed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_claim", sa.Integer, nullable=False, server_default="0"),
        sa.Column("n_done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("n_given_up", sa.Integer, nullable=False, server_default="0"),
        sa.Column("optuna_study", sa.String(200), nullable=True, unique=True),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=db_now()),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("ended_at", sa.DateTime, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_droptune_studies_queue", "droptune_studies", ["status", "priority", "id"])


def _leases() -> None:
    op.create_table(
        "droptune_leases",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "study_id",
            sa.Integer,
            sa.ForeignKey("droptune_studies.id"),
            nullable=False,
            index=True,
        ),
        sa.Column("worker_id", sa.String(64), nullable=False, index=True),
        sa.Column("trial_id", sa.Integer, nullable=True),
        sa.Column("trial_number", sa.Integer, nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("params", sa.JSON, nullable=True),
        sa.Column("claimed_at", sa.DateTime, nullable=False, server_default=db_now()),
        sa.Column("heartbeat_at", sa.DateTime, nullable=False, server_default=db_now()),
        sqlite_autoincrement=True,
    )


def _retries() -> None:
    op.create_table(
        "droptune_retries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "study_id",
            sa.Integer,
            sa.ForeignKey("droptune_studies.id"),
            nullable=False,
            index=True,
        ),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("origin_trial", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=db_now()),
        sqlite_autoincrement=True,
    )


def _workers() -> None:
    op.create_table(
        "droptune_workers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False, server_default=db_now()),
        sa.Column("heartbeat_at", sa.DateTime, nullable=False, server_default=db_now()),
        sa.Column("study_id", sa.Integer, nullable=True),
        sa.Column("trials", sa.JSON, nullable=True),
    )


def downgrade() -> None:
    for name in ("droptune_workers", "droptune_retries", "droptune_leases", "droptune_studies"):
        op.drop_table(name)
