"""The answer cached on the study's row, so reads never reload every trial.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("droptune_studies") as batch:
        batch.add_column(sa.Column("answer", sa.JSON, nullable=True))
        batch.add_column(sa.Column("answer_p", sa.JSON, nullable=True))
        batch.add_column(sa.Column("answer_trials", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("droptune_studies") as batch:
        batch.drop_column("answer_trials")
        batch.drop_column("answer_p")
        batch.drop_column("answer")
