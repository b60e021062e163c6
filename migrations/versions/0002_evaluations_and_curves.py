"""evaluations and learning curves

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 06:40:00

`a2m evaluate` and `a2m compare` judgements are kept (run, version, split, the image set judged,
metrics, when), so that the ledger can tell which runs were judged on the same images; `a2m curve`
results are kept for reports.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(length=16), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("images_hash", sa.String(length=64), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("macro_f1", sa.Float(), nullable=True),
        sa.Column("metrics_json", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_evaluations_run_id_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["version"],
            ["dataset_versions.number"],
            name=op.f("fk_evaluations_version_dataset_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_evaluations_run_id"), ["run_id"], unique=False)
    op.create_table(
        "curves",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("test_n", sa.Integer(), nullable=False),
        sa.Column("images_hash", sa.String(length=64), nullable=False),
        sa.Column("points_json", sa.Text(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["version"],
            ["dataset_versions.number"],
            name=op.f("fk_curves_version_dataset_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_curves")),
    )
    with op.batch_alter_table("curves", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_curves_version"), ["version"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("curves", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_curves_version"))
    op.drop_table("curves")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluations_run_id"))
    op.drop_table("evaluations")
