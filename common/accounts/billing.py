"""Charging a metered key: a hold at admission, released and settled at the end.

Admission (API.md section 8) runs in one transaction on the key's locked row:
today's free allowance is granted if it has not been (a ``grant`` row), the
request is admitted only if the allowance left plus the balance covers its input
and one unit of output, and its worst case is held: ``hold`` rows, from the
allowance first, then the balance, taken off the row at once. So concurrent
requests on any number of web processes can never spend more than the key has.
When the worst case is more than the money left, the hold is what is left, and
``max_output`` says how much output it pays for: the upstream's ``max_tokens``
is capped to it, so a job can never cost more than it holds.

At the job's end the retention process settles it (common/accounts/settlement.py):
each hold released whole and the real cost settled, in the transaction that
writes the job's history, so exactly once.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from common.accounts.ledger import LedgerKind, LedgerRow, Source
from common.accounts.models import ApiKey, utcnow
from common.accounts.pricing import Price, PriceUnit, Usage
from common.catalog import ModelConfig
from common.errors import InsufficientQuotaError
from common.tokens import content_text, estimate_prompt_tokens

#: Output assumed for a hold when a request sets no ``max_tokens``; it is then
#: sent upstream as the request's ``max_tokens``, so it is a true worst case.
DEFAULT_HOLD_OUTPUT_TOKENS = 4096
#: Characters a token may stand for, for models priced by the character.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Hold:
    """What admission held for a job."""

    free_micro: int
    balance_micro: int
    #: The key's balance after the hold (``X-Account-Balance``).
    balance_after_micro: int
    #: The most output tokens the hold pays for; None: the request's own limit.
    max_output_tokens: int | None


def insert_ignoring_duplicates(conn: Connection, row: dict[str, Any]) -> bool:
    """Insert a ledger row unless its (job, kind, source) is there; whether it was."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(LedgerRow.__table__)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["job_id", "kind", "source"])
        .returning(LedgerRow.__table__.c.id)
    )
    return conn.execute(statement).first() is not None


def lock_key(conn: Connection, key_id: str) -> Any:
    """The key's money columns, its row locked until the transaction ends.

    A no-op ``UPDATE`` locks the row on PostgreSQL and takes SQLite's write lock,
    so one statement serialises admissions on either.
    """
    conn.execute(
        update(ApiKey).where(ApiKey.id == key_id).values(free_day=ApiKey.free_day)
    )
    return conn.execute(
        select(
            ApiKey.balance_micro,
            ApiKey.daily_free_micro,
            ApiKey.free_left_micro,
            ApiKey.free_day,
        ).where(ApiKey.id == key_id)
    ).one_or_none()


class Billing:
    """Admits metered requests against their key's money."""

    def __init__(
        self,
        engine: Engine,
        timezone: ZoneInfo,
        totals: Mapping[tuple[str, str], float] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``totals``: each (provider, model)'s total timeout, the most seconds a
        per-second price can run up."""
        self.engine = engine
        self.totals = totals or {}
        self.timezone = timezone
        self.clock = clock

    def today(self) -> str:
        """Today's date where the allowance resets (``LLMQ_TIMEZONE``)."""
        return dt.datetime.fromtimestamp(self.clock(), self.timezone).date().isoformat()

    def admit(
        self,
        key_id: str,
        job_id: str,
        price: Price,
        input_units: int,
        max_output_tokens: int,
        max_seconds: float,
    ) -> Hold:
        """Hold the request's worst case (see the module); raise
        InsufficientQuotaError when its input and one unit out are not covered."""
        per_token = CHARS_PER_TOKEN if price.unit == PriceUnit.CHARS else 1
        worst = price.cost(
            Usage(input_units, max_output_tokens * per_token, Decimal(str(max_seconds)))
        )
        with self.engine.begin() as conn:
            key = lock_key(conn, key_id)
            if key is None or key.balance_micro is None:
                raise LookupError(key_id)
            free_left, today = self._free_today(conn, key_id, key)
            balance = key.balance_micro
            available = free_left + balance
            if available < price.cost(Usage(input_units, 1)):
                raise InsufficientQuotaError(balance)
            hold = min(worst, available)
            cap = None
            if hold < worst:
                affordable = price.output_affordable(input_units, hold)
                cap = None if affordable < 0 else max(1, affordable // per_token)
            from_free = min(hold, free_left)
            from_balance = hold - from_free
            conn.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id)
                .values(
                    free_left_micro=free_left - from_free,
                    free_day=today,
                    balance_micro=balance - from_balance,
                )
            )
            now = utcnow()
            for source, amount, after in (
                (Source.FREE, from_free, free_left - from_free),
                (Source.BALANCE, from_balance, balance - from_balance),
            ):
                if amount or source == Source.BALANCE:
                    insert_ignoring_duplicates(
                        conn,
                        {
                            "key_id": key_id,
                            "job_id": job_id,
                            "kind": LedgerKind.HOLD,
                            "source": source,
                            "amount_micro": -amount,
                            "balance_after_micro": after,
                            "created_at": now,
                        },
                    )
        return Hold(from_free, from_balance, balance - from_balance, cap)

    def _free_today(self, conn: Connection, key_id: str, key: Any) -> tuple[int, str]:
        """The allowance left today, granting today's if it is a new day."""
        today = self.today()
        if not key.daily_free_micro:
            return 0, today
        if key.free_day == today:
            return int(key.free_left_micro or 0), today
        insert_ignoring_duplicates(
            conn,
            {
                "key_id": key_id,
                "job_id": f"grant:{key_id}:{today}",
                "kind": LedgerKind.GRANT,
                "source": Source.FREE,
                "amount_micro": key.daily_free_micro,
                "balance_after_micro": key.daily_free_micro,
                "created_at": utcnow(),
            },
        )
        return int(key.daily_free_micro), today

    def hold_for(
        self, key_id: str, job_id: str, model: ModelConfig, body: dict[str, Any]
    ) -> Hold | None:
        """Admit a metered key's request (None: the model is free) and cap the
        upstream body's ``max_tokens`` to what the hold pays for."""
        price = model.price
        if price.free:
            return None
        field = (
            "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        )
        requested = body.get(field)
        most = int(requested or DEFAULT_HOLD_OUTPUT_TOKENS)
        if price.unit == PriceUnit.CHARS:
            input_units = sum(
                len(content_text(m.get("content"))) for m in body.get("messages", [])
            )
        else:
            input_units = estimate_prompt_tokens(body.get("messages", []))
        hold = self.admit(
            key_id,
            job_id,
            price,
            input_units,
            most,
            self.totals.get((model.provider, model.id), 0.0),
        )
        cap = min(most, hold.max_output_tokens or most)
        if requested is None or cap < requested:
            body[field] = cap
        return hold

    def release(self, job_id: str) -> None:
        """Give back the hold of a job that was never stored (its submit failed)."""
        with self.engine.begin() as conn:
            holds = conn.execute(
                select(
                    LedgerRow.key_id, LedgerRow.source, LedgerRow.amount_micro
                ).where(LedgerRow.job_id == job_id, LedgerRow.kind == LedgerKind.HOLD)
            ).all()
            if not holds:
                return
            key = lock_key(conn, holds[0].key_id)
            left = {
                Source.BALANCE: int(key.balance_micro or 0),
                Source.FREE: int(key.free_left_micro or 0),
            }
            for row in holds:
                back = -int(row.amount_micro)
                if insert_ignoring_duplicates(
                    conn,
                    {
                        "key_id": row.key_id,
                        "job_id": job_id,
                        "kind": LedgerKind.RELEASE,
                        "source": row.source,
                        "amount_micro": back,
                        "balance_after_micro": left[Source(row.source)] + back,
                        "created_at": utcnow(),
                    },
                ):
                    left[Source(row.source)] += back
            conn.execute(
                update(ApiKey)
                .where(ApiKey.id == holds[0].key_id)
                .values(
                    balance_micro=left[Source.BALANCE],
                    free_left_micro=left[Source.FREE],
                )
            )

    def unsettled_holds(self, older_than: dt.datetime, most: int) -> list[str]:
        """Jobs held for before ``older_than`` whose holds were never given back."""
        hold = LedgerRow.__table__.alias("hold")
        released = select(LedgerRow.id).where(
            LedgerRow.job_id == hold.c.job_id, LedgerRow.kind == LedgerKind.RELEASE
        )
        query = (
            select(hold.c.job_id)
            .where(
                hold.c.kind == LedgerKind.HOLD,
                hold.c.source == Source.BALANCE,
                hold.c.created_at < older_than,
                ~released.exists(),
            )
            .limit(most)
        )
        with self.engine.connect() as conn:
            return [str(job_id) for job_id in conn.scalars(query)]

    def balance(self, key_id: str) -> int | None:
        """A key's balance now (None: unmetered or no such key)."""
        with self.engine.connect() as conn:
            return conn.scalar(select(ApiKey.balance_micro).where(ApiKey.id == key_id))
