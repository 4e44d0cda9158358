"""Global rate and concurrency limits kept in Redis, so they hold across every worker.

Rates use GCRA (the generic cell rate algorithm): each limit is one key holding
its theoretical arrival time (TAT) in µs, so a check is one atomic script with
no per-request log.

- Provider and model limits *reserve*: a request that would exceed a limit is
  given the time it may go and the TAT moves on, so concurrent workers queue up
  in order instead of racing. ``rpm`` spaces requests ``60/rpm`` s apart with no
  burst, so the provider never sees more than its limit in any window; ``tpm``
  charges the estimated tokens and allows a burst of ``TPM_BURST_SECONDS``.
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

from common.redis import keys

#: Rates keep time in whole microseconds: a unit of a 100M-tpm limit is 0.6 µs,
#: so milliseconds would need fractions, and Redis takes only integers (``PX``).
US_PER_SECOND = 1_000_000
US_PER_MINUTE = 60 * US_PER_SECOND
#: Seconds of provider tpm that may be spent at once.
TPM_BURST_SECONDS = 6

# What the rate scripts share: Redis's clock in µs, and writing a TAT. A TAT in µs
# (~1.8e15) is exact in Lua's doubles, but Lua would hand it to Redis as text
# with 14 significant digits, hence '%.0f'; its expiry is whole ms.
_RATE_LIB = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function set_tat(key, tat)
  redis.call('SET', key, string.format('%.0f', tat),
             'PX', math.floor((tat - now) / 1000) + 1000)
end
"""

# KEYS: rate keys. ARGV: per key (cost µs, tolerance µs).
# Reserves every limit at once; returns the µs to wait before going.
_RESERVE = (
    _RATE_LIB
    + """
local start = now
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local ready = tat - tonumber(ARGV[i * 2])
  if ready > start then start = ready end
end
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < start then tat = start end
  set_tat(KEYS[i], tat + tonumber(ARGV[i * 2 - 1]))
end
return start - now
"""
)

# KEYS: rate keys. ARGV: per key (cost µs, window µs).
# Admits only if every limit has room in its window; returns
# {admitted, wait µs, then per key: µs until its TAT is back at now}.
_ADMIT = (
    _RATE_LIB
    + """
local wait, tats = 0, {}
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new = tat + tonumber(ARGV[i * 2 - 1])
  local over = new - now - tonumber(ARGV[i * 2])
  if over > wait then wait = over end
  tats[i] = new
end
local out = {wait > 0 and 0 or 1, wait}
for i = 1, #KEYS do
  if wait <= 0 then
    set_tat(KEYS[i], tats[i])
    out[#out + 1] = tats[i] - now
  else
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    out[#out + 1] = math.max(0, tat - now)
  end
end
return out
"""
)

# KEYS: one rate key. ARGV: µs to add (may be negative).
_SETTLE = (
    _RATE_LIB
    + """
local tat = tonumber(redis.call('GET', KEYS[1]) or now) + tonumber(ARGV[1])
if tat <= now then redis.call('DEL', KEYS[1]) return 0 end
set_tat(KEYS[1], tat)
return tat - now
"""
)

# KEYS: slot sets. ARGV: holder, hold ms, then one limit per key.
# Takes a slot in every set or none; returns 1 if taken.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if not redis.call('ZSCORE', KEYS[i], ARGV[1])
     and redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[i + 2]) then
    return 0
  end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2]) * 2)
end
return 1
"""

# KEYS: slot sets. ARGV: holder, hold ms. Renews the holder where it holds.
_RENEW_SLOTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2]) * 2)
end
return 1
"""


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
        self._reserve = client.register_script(_RESERVE)
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW_SLOTS)

    def reserve(self, rates: Sequence[tuple[Rate, int]]) -> float:
        """Reserve ``(rate, units)`` on every limit; return seconds to wait first."""
        if not rates:
            return 0.0
        args: list[int] = []
        for rate, units in rates:
            tolerance = TPM_BURST_SECONDS * US_PER_SECOND if rate.unit == "tpm" else 0
            args += [rate.cost_us(units), tolerance]
        wait_us = self._reserve(keys=[r.key for r, _ in rates], args=args)
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
