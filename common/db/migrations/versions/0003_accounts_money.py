"""Money as integer micro-units, and the ledger and per-job usage of accounts.

api_keys.balance and daily_free were exact decimals (NUMERIC(18, 6)); they
become balance_micro and daily_free_micro (BIGINT, 1 = 0.000001), each value
carried over. The ledger holds every change of a key's money; job_usage what
each settled job used and cost (API.md section 8).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("balance_micro", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("daily_free_micro", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE api_keys SET"
        " balance_micro = CAST(ROUND(balance * 1000000) AS BIGINT),"
        " daily_free_micro = CAST(ROUND(daily_free * 1000000) AS BIGINT)"
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("balance")
        batch.drop_column("daily_free")
    op.create_table(
        "ledger",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("amount_micro", sa.BigInteger(), nullable=False),
        sa.Column("balance_after_micro", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.String(500), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "job_id", "kind", "source", name="uq_ledger_job_kind_source"
        ),
    )
    op.create_index("ix_ledger_key_id", "ledger", ["key_id", "id"])
    op.create_table(
        "job_usage",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("provider", sa.String(255), nullable=False),
        sa.Column("input_units", sa.BigInteger(), nullable=False),
        sa.Column("output_units", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Numeric(18, 6), nullable=False),
        sa.Column("cost_micro", sa.BigInteger(), nullable=False),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.Column("settled_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("job_id"),
    )
    op.create_index("ix_job_usage_settled", "job_usage", ["settled_at", "key_id"])


def downgrade() -> None:
    op.drop_index("ix_job_usage_settled", table_name="job_usage")
    op.drop_table("job_usage")
    op.drop_index("ix_ledger_key_id", table_name="ledger")
    op.drop_table("ledger")
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("balance", sa.Numeric(18, 6), nullable=True))
        batch.add_column(sa.Column("daily_free", sa.Numeric(18, 6), nullable=True))
    op.execute(
        "UPDATE api_keys SET"
        " balance = CAST(balance_micro AS NUMERIC(24, 6)) / 1000000,"
        " daily_free = CAST(daily_free_micro AS NUMERIC(24, 6)) / 1000000"
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("balance_micro")
        batch.drop_column("daily_free_micro")
