"""the process a running run belongs to

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 06:30:00

A pid alone cannot tell a killed training from a new process that reused its number, nor a run on
another machine of a shared store from a dead one here: a running run also records the host it
runs on and when its process started (the operating system's own start time, via psutil).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("host", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("process_started", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("process_started")
        batch_op.drop_column("host")
