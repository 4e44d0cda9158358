"""The admin API's request bodies for keys and their money (API.md section 8)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from common.accounts.pricing import MICRO, MoneyError, parse_money
from common.accounts.reports import BucketWidth, GroupBy

#: Largest limit a key may have: its ``Integer`` columns hold 32 bits on PostgreSQL.
KEY_LIMIT_MAX = 2**31 - 1
#: Most money a key may hold, in whole units (its columns hold micro-units).
KEY_MONEY_MAX = 10**12 - 1
#: The same in micro-units: 999999999999.999999.
_MOST_MICRO = KEY_MONEY_MAX * MICRO + MICRO - 1


def _money(value: object) -> int:
    """Micro-units of an amount: a decimal string or an exact number."""
    try:
        return parse_money(value)
    except MoneyError as exc:
        raise ValueError(str(exc)) from None


#: An amount of money in a request, as micro-units (common/accounts/pricing.py).
Money = Annotated[int, BeforeValidator(_money)]
#: An amount a key may hold: not negative, below 10**12.
KeyMoney = Annotated[Money, Field(ge=0, le=_MOST_MICRO)]
#: A key's rpm, tpm or concurrency.
KeyLimit = Annotated[int, Field(ge=1, le=KEY_LIMIT_MAX)]


def _utc_representable(value: dt.datetime | None) -> dt.datetime | None:
    """The key stores its expiry in UTC, which year 1 or 9999 may lack."""
    if value is not None and value.tzinfo is not None:
        try:
            value.astimezone(dt.UTC)
        except OverflowError:
            raise ValueError("the time in UTC is out of range") from None
    return value


class KeyUpdateRequest(BaseModel):
    """``PATCH /admin/keys/{id}``: what is given changes, ``null`` clears it.

    Bounded by what the key's columns hold: past that, the database refuses the
    row, which is the client's error, not a 500 or a 503. The balance changes
    only through credits, each a ledger row.
    """

    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="", min_length=1, max_length=200)
    daily_free: KeyMoney | None = None
    rpm: KeyLimit | None = None
    tpm: KeyLimit | None = None
    concurrency: KeyLimit | None = None
    models: list[str] | None = None
    expires_at: dt.datetime | None = None

    _expiry = field_validator("expires_at")(_utc_representable)


class KeyCreateRequest(KeyUpdateRequest):
    """``POST /admin/keys``: a name, and a balance to meter the key."""

    name: str = Field(min_length=1, max_length=200)
    balance: KeyMoney | None = None


class CreditRequest(BaseModel):
    """``POST /admin/keys/{id}/credit``: a negative amount debits."""

    model_config = ConfigDict(extra="forbid")
    amount: Annotated[Money, Field(ge=-_MOST_MICRO, le=_MOST_MICRO)]
    note: str | None = Field(default=None, max_length=500)


class LedgerQuery(BaseModel):
    """``GET /admin/keys/{id}/ledger``: oldest first, after a row id."""

    after: int | None = Field(default=None, ge=0)
    limit: int = Field(default=20, ge=1, le=100)


class UsageQuery(BaseModel):
    """``GET /v1/usage`` and ``/admin/usage``, as OpenAI's usage API takes them."""

    model_config = ConfigDict(extra="forbid")
    start_time: int = Field(ge=0)
    end_time: int | None = Field(default=None, ge=0)
    bucket_width: BucketWidth = BucketWidth.DAY
    group_by: GroupBy | None = None
    limit: int = Field(default=7, ge=1, le=168)
    page: int = Field(default=0, ge=0)
    format: Literal["json", "csv"] = "json"
