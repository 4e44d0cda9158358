"""Charging a metered key: a hold at admission, settled at the job's end.

Admission (API.md section 8) is one Redis script beside the rate limits
(lua/money_hold.lua), so a key's concurrent requests on any number of web
processes never wait for each other on a database row, and can never spend more
than the key has. A key's live money is a Redis hash: ``settled`` (its balance
in the database), ``held`` (what open holds took from it), and today's free
allowance; it is loaded from the database on first use. The hold is the
request's worst case, from the allowance first; when that is more than the
money left, it is what is left and ``max_output_tokens`` says what it pays for:
the upstream's ``max_tokens`` is capped to it, so a job can never cost more than
it holds.

The database learns of a hold when its job is settled: the retention process
writes the hold, its release and the cost in the transaction that writes the
job's history (common/accounts/settlement.py), then ends the open hold here
(``end_hold``). A hold whose job was never stored is given back whole.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast
from zoneinfo import ZoneInfo

import redis
from sqlalchemy import Connection, Engine, select

from common.accounts.ledger import LedgerRow
from common.accounts.models import ApiKey
from common.accounts.pricing import Price, PriceUnit, Usage
from common.accounts.store import InsufficientBalanceError, credit
from common.catalog import ModelConfig
from common.errors import InsufficientQuotaError
from common.redis import keys, scripts
from common.tokens import content_text, estimate_prompt_tokens

#: Output assumed for a hold when a request sets no ``max_tokens``; it is then
#: sent upstream as the request's ``max_tokens``, so it is a true worst case.
DEFAULT_HOLD_OUTPUT_TOKENS = 4096
#: Characters a token may stand for, for models priced by the character.
CHARS_PER_TOKEN = 4
#: Most a single hold may be (what a Lua number holds exactly).
MOST_HOLD_MICRO = 2**53 - 1


@dataclass(frozen=True)
class Hold:
    """What admission held for a job."""

    free_micro: int
    balance_micro: int
    #: The key's balance after the hold (``X-Account-Balance``).
    balance_after_micro: int
    #: The most output tokens the hold pays for; None: the request's own limit.
    max_output_tokens: int | None


@dataclass(frozen=True)
class OpenHold:
    """A hold not yet settled, as Redis keeps it."""

    key_id: str
    free_micro: int
    balance_micro: int
    #: The day (in LLMQ_TIMEZONE) the allowance part was taken from.
    day: str
    #: This hold's admission granted that day's allowance.
    granted: bool
    taken_at: int

    @classmethod
    def parse(cls, entry: bytes) -> OpenHold:
        key_id, free, balance, day, granted, at = entry.decode().split(" ")
        return cls(key_id, int(free), int(balance), day, granted == "1", int(at))


def money_row(conn: Connection, key_id: str) -> Any:
    """The key's money columns as the database has them (None: no such key)."""
    return conn.execute(
        select(
            ApiKey.balance_micro,
            ApiKey.daily_free_micro,
            ApiKey.free_left_micro,
            ApiKey.free_day,
        ).where(ApiKey.id == key_id)
    ).one_or_none()


class Billing:
    """Admits metered requests against their key's money, and ends their holds."""

    def __init__(
        self,
        engine: Engine,
        client: redis.Redis,
        timezone: ZoneInfo,
        totals: Mapping[tuple[str, str], float] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``totals``: each (provider, model)'s total timeout, the most seconds a
        per-second price can run up."""
        self.engine = engine
        self.redis = client
        self.timezone = timezone
        self.totals = totals or {}
        self.clock = clock
        self._hold = scripts.register(client, "money_hold")
        self._end = scripts.register(client, "money_settle")
        self._adjust = scripts.register(client, "money_adjust")

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
        usage = Usage(
            input_units, max_output_tokens * per_token, Decimal(str(max_seconds))
        )
        worst = min(price.cost(usage), MOST_HOLD_MICRO)
        need = price.cost(Usage(input_units, 1))
        base = [job_id, need, worst, self.today(), int(self.clock())]
        reply = self._run_hold(key_id, [*base, "", "", "", "", ""])
        while int(reply[0]) == -1:  # not loaded, or changed while loading
            reply = self._run_hold(key_id, [*base, *self._loaded(key_id, reply[1])])
        settled, held = int(reply[1]), int(reply[2])
        if int(reply[0]) == 0:
            raise InsufficientQuotaError(settled - held)
        from_free, from_balance = int(reply[3]), int(reply[4])
        hold = from_free + from_balance
        cap = None
        if hold < worst:
            affordable = price.output_affordable(input_units, hold)
            cap = None if affordable < 0 else max(1, affordable // per_token)
        return Hold(from_free, from_balance, settled - held, cap)

    def _run_hold(self, key_id: str, args: list[Any]) -> list[Any]:
        return cast(
            list[Any],
            self._hold(
                keys=[
                    keys.money_key(key_id),
                    keys.MONEY_HOLDS_KEY,
                    keys.money_generation_key(key_id),
                ],
                args=[*args, key_id],
            ),
        )

    def _loaded(self, key_id: str, generation: bytes) -> list[str]:
        """The generation seen, then the key's money as the database has it."""
        with self.engine.connect() as conn:
            row = money_row(conn, key_id)
        if row is None or row.balance_micro is None:
            raise LookupError(key_id)
        return [
            generation.decode(),
            str(row.balance_micro),
            str(row.daily_free_micro or 0),
            str(row.free_left_micro or 0),
            row.free_day or "",
        ]

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

    def open_holds(self, job_ids: Sequence[str]) -> dict[str, OpenHold]:
        """The open holds of these jobs (a job without one is absent)."""
        if not job_ids:
            return {}
        entries = cast(
            list[bytes | None], self.redis.hmget(keys.MONEY_HOLDS_KEY, list(job_ids))
        )
        return {
            job_id: OpenHold.parse(entry)
            for job_id, entry in zip(job_ids, entries, strict=True)
            if entry is not None
        }

    def end_hold(
        self, job_id: str, hold: OpenHold, cost_micro: int, free_back_micro: int
    ) -> bool:
        """End a hold once its settlement is committed (or, with a cost of 0 and
        the whole allowance part back, give it back); False if already ended."""
        return bool(
            self._end(
                keys=[keys.money_key(hold.key_id), keys.MONEY_HOLDS_KEY],
                args=[job_id, str(-cost_micro), str(free_back_micro), hold.day],
            )
        )

    def release(self, job_id: str) -> None:
        """Give back the hold of a job that was never stored (its submit failed)."""
        hold = self.open_holds([job_id]).get(job_id)
        if hold is not None:
            self.end_hold(job_id, hold, 0, hold.free_micro)

    def stale_holds(self, older_than_seconds: float) -> dict[str, OpenHold]:
        """Open holds taken more than ``older_than_seconds`` ago."""
        cutoff = self.clock() - older_than_seconds
        stale: dict[str, OpenHold] = {}
        for job_id, entry in self.redis.hscan_iter(keys.MONEY_HOLDS_KEY, count=1000):
            hold = OpenHold.parse(entry)
            if hold.taken_at < cutoff:
                stale[job_id.decode()] = hold
        return stale

    def adjust(self, key_id: str, amount_micro: int) -> bool:
        """Apply a credit (or debit) to the key's live money; False if a debit
        would take it below zero."""
        return bool(
            self._adjust(
                keys=[keys.money_key(key_id), keys.money_generation_key(key_id)],
                args=[str(amount_micro)],
            )
        )

    def credit(
        self, key_id: str, amount: int, note: str | None = None
    ) -> LedgerRow | None:
        """``common.accounts.store.credit``, with the key's live money in step: a
        debit is checked against the balance less its open holds first, and put
        back if the database refuses it. None if there is no such key.

        Raises:
            InsufficientBalanceError: the debit is more than the money left.
        """
        if amount < 0 and not self.adjust(key_id, amount):
            raise InsufficientBalanceError
        try:
            row = credit(self.engine, key_id, amount, note)
        except InsufficientBalanceError:
            self.adjust(key_id, -amount)
            raise
        if row is None:
            if amount < 0:
                self.adjust(key_id, -amount)
        elif amount >= 0:
            self.adjust(key_id, amount)
        return row

    def set_daily_free(self, key_id: str, micro: int | None) -> None:
        """A changed daily allowance, for the live view if it is loaded."""
        if self.redis.exists(keys.money_key(key_id)):
            self.redis.hset(keys.money_key(key_id), "daily_free", str(micro or 0))

    def live(self, key_id: str) -> tuple[int, int | None, str | None] | None:
        """The key's balance less its open holds, free allowance left and its
        day, as Redis has them; None when not loaded."""
        settled, held, free_left, day = cast(
            list[bytes | None],
            self.redis.hmget(
                keys.money_key(key_id), ["settled", "held", "free_left", "free_day"]
            ),
        )
        if settled is None:
            return None
        return (
            int(settled) - int(held or 0),
            int(free_left) if free_left is not None else None,
            day.decode() if day else None,
        )

    def balance(self, key_id: str) -> int | None:
        """A key's balance now (None: unmetered or no such key)."""
        live = self.live(key_id)
        if live is not None:
            return live[0]
        with self.engine.connect() as conn:
            return conn.scalar(select(ApiKey.balance_micro).where(ApiKey.id == key_id))
