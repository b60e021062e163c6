"""flags pushed to Label Studio

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 06:45:00

What `a2m flag` needs to push, unflag and resolve a flag: the task's answers when it was flagged
(a later one means it was looked at again), the review field and the tab it went to, and the
annotation a requeue turned into a draft. One flag per (run, task), so flagging twice adds nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("flags", schema=None) as batch_op:
        batch_op.add_column(sa.Column("answers_json", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("review_field", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("view_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("requeued_annotation_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("draft_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_flags_run_id"), ["run_id"], unique=False)
        batch_op.create_unique_constraint(
            batch_op.f("uq_flags_run_id_task_row_id"), ["run_id", "task_row_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("flags", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_flags_run_id_task_row_id"), type_="unique")
        batch_op.drop_index(batch_op.f("ix_flags_run_id"))
        batch_op.drop_column("draft_id")
        batch_op.drop_column("requeued_annotation_id")
        batch_op.drop_column("view_id")
        batch_op.drop_column("review_field")
        batch_op.drop_column("answers_json")
