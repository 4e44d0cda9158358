"""API keys as stored: the ``api_keys`` table, and the identity a request carries.

A key is stored only as its SHA-256 digest (``digest``); see common/accounts/store.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from common.accounts.pricing import format_money
from common.db.base import Base

KEY_PREFIX = "llmq-"


class ApiKey(Base):
    """One API key and the limits it carries."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    hint: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    #: Micro-units (common/accounts/pricing.py); None: the key is not metered.
    balance_micro: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: Micro-units of free allowance each day; None: none.
    daily_free_micro: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: What is left of the allowance on ``free_day`` (YYYY-MM-DD in LLMQ_TIMEZONE).
    free_left_micro: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    free_day: Mapped[str | None] = mapped_column(String(10), nullable=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)

    def to_dict(self) -> dict[str, Any]:
        """The key as admins see it (never the key itself)."""

        def stamp(value: dt.datetime | None) -> int | None:
            return int(value.replace(tzinfo=dt.UTC).timestamp()) if value else None

        return {
            "id": self.id,
            "object": "api_key",
            "name": self.name,
            "hint": self.hint,
            "created_at": stamp(self.created_at),
            "revoked_at": stamp(self.revoked_at),
            "expires_at": stamp(self.expires_at),
            "balance": _shown(self.balance_micro),
            "daily_free": _shown(self.daily_free_micro),
            "rpm": self.rpm,
            "tpm": self.tpm,
            "concurrency": self.concurrency,
            "models": self.models,
        }


def _shown(micro: int | None) -> str | None:
    return None if micro is None else format_money(micro)


@dataclass(frozen=True)
class KeyIdentity:
    """What a request learns about the key it carries."""

    id: str
    name: str
    models: tuple[str, ...] | None
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    expires_at: dt.datetime | None = None
    #: The key's digest, and the keys' generation counter it was checked at.
    digest: str = ""
    generation: str = ""
    #: The key has a balance: its requests are charged (API.md section 8).
    metered: bool = False


def digest(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)
