"""Global rate and concurrency limits kept in Redis, so they hold across every worker.

Rates use GCRA (the generic cell rate algorithm): each limit is one key holding
its theoretical arrival time (TAT) in µs, so a check is one atomic script with
no per-request log.

- Provider and model limits *reserve*: a request that would exceed a limit is
  given the time it may go and the TAT moves on, so concurrent workers queue up
  in order instead of racing. ``rpm`` spaces requests ``60/rpm`` s apart with no
  burst beyond ``BULK_LEAD_SECONDS`` (below), so the provider never sees more
  than its limit in any window but that lead's worth; ``tpm``
  charges the estimated tokens and allows a burst of ``TPM_BURST_SECONDS``.
- Batch requests reserve only what is free now (``reserve_bulk``): a limit's
  TAT may run at most ``BULK_LEAD_SECONDS`` (or one request's cost, if more)
  ahead of now. Interactive reservations get that lead as their tolerance, so a
  running batch never makes an interactive call wait; the price is that the
  provider may see up to ``BULK_LEAD_SECONDS`` of requests early, once.
- Per-key limits at the front door *deny*: up to ``rpm`` requests and ``tpm``
  tokens in any minute, else 429 with the time to wait.
- Concurrency is a sorted set of holders scored by expiry, renewed by the
  worker's heartbeat, so a crashed worker's slots free themselves.

After a job ends, tpm reservations are settled with the real token count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import redis

from common.redis import keys, scripts

#: Rates keep time in whole microseconds: a unit of a 100M-tpm limit is 0.6 µs,
#: so milliseconds would need fractions, and Redis takes only integers (``PX``).
US_PER_SECOND = 1_000_000
US_PER_MINUTE = 60 * US_PER_SECOND
#: Seconds of provider tpm that may be spent at once.
TPM_BURST_SECONDS = 6
#: How far ahead of now batch requests may reserve a limit, and so the
#: tolerance interactive reservations get (see the module's docstring).
BULK_LEAD_SECONDS = 0.03


@dataclass(frozen=True)
class Rate:
    """One rate limit: ``limit`` units per minute on ``scope``."""

    scope: str
    unit: str  # "rpm" or "tpm"
    limit: int

    @property
    def key(self) -> str:
        return keys.rate_key(self.scope, self.unit)

    def cost_us(self, units: int) -> int:
        """Microseconds of the window ``units`` use up (rounded away from zero)."""
        cost = -(-abs(units) * US_PER_MINUTE // self.limit)
        return cost if units >= 0 else -cost

    def units_in(self, us: int) -> int:
        """Whole units that fit in ``us`` microseconds of the window."""
        return max(0, us) * self.limit // US_PER_MINUTE


@dataclass(frozen=True)
class Admission:
    """The front door's answer for one request, with OpenAI's header values."""

    admitted: bool
    retry_after_seconds: float
    remaining: dict[str, int]
    reset_seconds: dict[str, float]


class Limiter:
    """Reserves, admits, settles and holds limits in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._reserve = scripts.register(client, "reserve_rates")
        self._reserve_bulk = scripts.register(client, "reserve_rates_bulk")
        self._admit = scripts.register(client, "admit_rates")
        self._settle = scripts.register(client, "settle_rate")
        self._acquire = scripts.register(client, "acquire_slots")
        self._renew = scripts.register(client, "renew_slots")

    def reserve(self, rates: Sequence[tuple[Rate, int]]) -> float:
        """Reserve ``(rate, units)`` on every limit; return seconds to wait first."""
        if not rates:
            return 0.0
        args: list[int] = []
        for rate, units in rates:
            tolerance = TPM_BURST_SECONDS if rate.unit == "tpm" else BULK_LEAD_SECONDS
            args += [rate.cost_us(units), int(tolerance * US_PER_SECOND)]
        wait_us = self._reserve(keys=[r.key for r, _ in rates], args=args)
        return max(0.0, cast(int, wait_us) / US_PER_SECOND)

    def reserve_bulk(self, rates: Sequence[tuple[Rate, int]]) -> float:
        """Reserve ``(rate, units)`` for a batch request if every limit has room
        now; 0.0 when reserved, else the seconds until it may have."""
        if not rates:
            return 0.0
        lead = int(BULK_LEAD_SECONDS * US_PER_SECOND)
        args: list[int] = []
        for rate, units in rates:
            args += [rate.cost_us(units), lead]
        wait_us = self._reserve_bulk(keys=[r.key for r, _ in rates], args=args)
        return max(0.0, cast(int, wait_us) / US_PER_SECOND)

    def admit(self, rates: Sequence[tuple[Rate, int]]) -> Admission:
        """Admit a request if every ``(rate, units)`` fits in its minute, else deny."""
        if not rates:
            return Admission(True, 0.0, {}, {})
        args: list[int] = []
        for rate, units in rates:
            args += [rate.cost_us(units), US_PER_MINUTE]
        reply = cast(list[int], self._admit(keys=[r.key for r, _ in rates], args=args))
        remaining, reset = {}, {}
        for (rate, _), used_us in zip(rates, reply[2:], strict=True):
            remaining[rate.unit] = rate.units_in(US_PER_MINUTE - int(used_us))
            reset[rate.unit] = int(used_us) / US_PER_SECOND
        return Admission(
            bool(reply[0]), int(reply[1]) / US_PER_SECOND, remaining, reset
        )

    def settle(self, rate: Rate, extra_units: int) -> None:
        """Correct a reservation by ``extra_units`` (negative gives time back)."""
        if extra_units:
            self._settle(keys=[rate.key], args=[rate.cost_us(extra_units)])

    def acquire_slots(
        self, holder: str, slots: Sequence[tuple[str, int]], hold_seconds: float
    ) -> bool:
        """Take a concurrency slot in every ``(scope, limit)``, or none."""
        if not slots:
            return True
        taken = self._acquire(
            keys=[keys.slots_key(scope) for scope, _ in slots],
            args=[holder, int(hold_seconds * 1000), *[limit for _, limit in slots]],
        )
        return bool(taken)

    def renew_slots(
        self, holder: str, scopes: Sequence[str], hold_seconds: float
    ) -> None:
        """Keep ``holder``'s slots alive for another ``hold_seconds``."""
        if scopes:
            self._renew(
                keys=[keys.slots_key(scope) for scope in scopes],
                args=[holder, int(hold_seconds * 1000)],
            )

    def release_slots(self, holder: str, scopes: Sequence[str]) -> None:
        """Give back ``holder``'s slots."""
        if scopes:
            pipe = self.redis.pipeline()
            for scope in scopes:
                pipe.zrem(keys.slots_key(scope), holder)
            pipe.execute()
