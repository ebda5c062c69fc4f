"""The final refit: a study's refit state, refit leases, and the models it trains.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from droptune.storage.sql.db import db_now

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("droptune_studies") as batch:
        batch.add_column(sa.Column("refit_state", sa.String(16), nullable=True))
        batch.add_column(
            sa.Column("refit_attempts", sa.Integer, nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("refit_result", sa.JSON, nullable=True))
        batch.add_column(sa.Column("test_dataset_id", sa.Integer, nullable=True))
    op.create_index("ix_droptune_studies_test_dataset_id", "droptune_studies", ["test_dataset_id"])
    with op.batch_alter_table("droptune_leases") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="trial"))
    op.create_table(
        "droptune_models",
        sa.Column(
            "study_id",
            sa.Integer,
            sa.ForeignKey("droptune_studies.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("role", sa.String(16), primary_key=True),
        sa.Column("dropout", sa.Float, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("file", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=db_now()),
    )


def downgrade() -> None:
    op.drop_table("droptune_models")
    with op.batch_alter_table("droptune_leases") as batch:
        batch.drop_column("kind")
    op.drop_index("ix_droptune_studies_test_dataset_id", "droptune_studies")
    with op.batch_alter_table("droptune_studies") as batch:
        batch.drop_column("test_dataset_id")
        batch.drop_column("refit_result")
        batch.drop_column("refit_attempts")
        batch.drop_column("refit_state")
