"""What is left of a key's free allowance today, kept on its row.

Admission takes a hold from the free allowance first (API.md section 8): the
amount left and the day it is for (in LLMQ_TIMEZONE) sit on the key's row, so
one locked row answers what a request may spend.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("free_left_micro", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("free_day", sa.String(10), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("free_day")
        batch.drop_column("free_left_micro")
