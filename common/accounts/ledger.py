"""The accounts' books: the append-only ledger and each settled job's usage.

Every change of a key's money is a ledger row (API.md section 8): a credit (or
debit) by an admin, a job's hold, its settlement and the release of what the
hold kept beyond it, and each day's grant of the free allowance. A row is unique
per (job, kind, source), so a replayed write cannot count twice, and carries the
balance after it: a key's balance is always the sum of its rows whose source is
the balance. Amounts are integer micro-units (common/accounts/pricing.py).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from common.db.base import Base


class LedgerKind(StrEnum):
    """What a ledger row records."""

    CREDIT = "credit"
    HOLD = "hold"
    SETTLE = "settle"
    RELEASE = "release"
    GRANT = "grant"


class Source(StrEnum):
    """Whose money a row moves: the key's balance or today's free allowance."""

    BALANCE = "balance"
    FREE = "free"


class LedgerRow(Base):
    """One change of a key's money."""

    __tablename__ = "ledger"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    key_id: Mapped[str] = mapped_column(String(40), ForeignKey("api_keys.id"))
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    amount_micro: Mapped[int] = mapped_column(BigInteger)
    balance_after_micro: Mapped[int] = mapped_column(BigInteger)
    note: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)

    __table_args__ = (
        UniqueConstraint("job_id", "kind", "source", name="uq_ledger_job_kind_source"),
        Index("ix_ledger_key_id", "key_id", "id"),
    )


class JobUsage(Base):
    """What one settled job used and cost."""

    __tablename__ = "job_usage"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(255))
    provider: Mapped[str] = mapped_column(String(255))
    input_units: Mapped[int] = mapped_column(BigInteger)
    output_units: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[Decimal] = mapped_column(Numeric(18, 6))
    cost_micro: Mapped[int] = mapped_column(BigInteger)
    #: True when the provider sent no usage and it was counted by llmq.
    estimated: Mapped[bool] = mapped_column(Boolean)
    settled_at: Mapped[dt.datetime] = mapped_column(DateTime)

    __table_args__ = (Index("ix_job_usage_settled", "settled_at", "key_id"),)
