"""promotion decisions of `a2m serve --auto-train`

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 17:00:00

Each time the server trains a version by itself it records what it decided: the new run was served
(promoted over the run that was served), kept in the ledger and not served (with the reason the
judging gave), or no run came of it (the training failed, and why). A version with a decision is
not trained again by itself; `a2m runs` and the server's /v1/model show the reasons.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("served_run_id", sa.Integer(), nullable=True),
        sa.Column("promoted", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("details_json", sa.Text(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["version"],
            ["dataset_versions.number"],
            name=op.f("fk_promotions_version_dataset_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_promotions_run_id_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["served_run_id"],
            ["runs.id"],
            name=op.f("fk_promotions_served_run_id_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotions")),
    )
    with op.batch_alter_table("promotions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_promotions_version"), ["version"], unique=False)
        batch_op.create_index(batch_op.f("ix_promotions_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("promotions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_promotions_run_id"))
        batch_op.drop_index(batch_op.f("ix_promotions_version"))
    op.drop_table("promotions")
