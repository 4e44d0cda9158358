"""Money and prices: exact decimals in, integer micro-units stored, strings out.

An amount of the operator's money (yuan, credits) is held as an ``int`` of
micro-units (1 = 0.000001), so sums are exact and a database column holds it as
an integer. It comes in as a decimal string or a JSON number read from its text
(never through a float) and goes out as a decimal string (``"123.0165"``).

A model's price (API.md section 8) adds: ``per_request``; ``input_per_1k`` per
1,000 units of input beyond ``input_free`` units; ``output_per_1k`` per 1,000
units of output; ``per_second`` per second from the upstream call to the last
token. A unit is a token or, with ``unit: chars``, a Unicode code point. A job's
cost is computed exactly and rounded once, half up, to a micro-unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Micro-units per unit of money.
MICRO = 1_000_000
#: Largest amount a key may hold (what a signed 64-bit column can, with room).
MONEY_MAX_MICRO = 10**18


class MoneyError(ValueError):
    """Not an amount of money: not a decimal, more than six places, or too large."""


def parse_money(value: object) -> int:
    """Micro-units of a decimal string, an int or a Decimal; floats are refused
    (their binary value is not the amount that was written)."""
    if isinstance(value, bool) or isinstance(value, float):
        raise MoneyError("an amount must be a decimal string or an exact number")
    try:
        amount = Decimal(value) if isinstance(value, (str, int, Decimal)) else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite():
        raise MoneyError(f"not an amount of money: {value!r}")
    micro = amount * MICRO
    if micro != micro.to_integral_value():
        raise MoneyError("an amount has at most six decimal places")
    if abs(micro) >= MONEY_MAX_MICRO:
        raise MoneyError("an amount must be below 10**12")
    return int(micro)


def format_money(micro: int) -> str:
    """``"123.0165"``: the amount with no trailing zeros (``"0"``, ``"-2.5"``)."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    text = f"{whole}.{frac:06d}".rstrip("0").rstrip(".")
    return sign + text


class PriceUnit(StrEnum):
    """What a price counts."""

    TOKENS = "tokens"
    CHARS = "chars"


@dataclass(frozen=True)
class Usage:
    """What a job used, in its price's unit."""

    input_units: int
    output_units: int
    seconds: Decimal = Decimal(0)


def _exact(value: object) -> object:
    """A rate as written: YAML's floats by their shortest text (``0.0003`` is
    that, not its binary neighbour), strings and ints as they are."""
    if isinstance(value, bool):
        raise ValueError("a price is a number")
    if isinstance(value, float):
        return Decimal(repr(value))
    return value


class Price(BaseModel):
    """A model's price in the catalog (API.md section 8), each rate exact."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_1k: Decimal = Field(default=Decimal(0), ge=0)
    output_per_1k: Decimal = Field(default=Decimal(0), ge=0)
    per_request: Decimal = Field(default=Decimal(0), ge=0)
    per_second: Decimal = Field(default=Decimal(0), ge=0)
    unit: PriceUnit = PriceUnit.TOKENS
    input_free: int = Field(default=0, ge=0)

    _rates = field_validator(
        "input_per_1k", "output_per_1k", "per_request", "per_second", mode="before"
    )(_exact)

    @property
    def free(self) -> bool:
        return not (
            self.input_per_1k
            or self.output_per_1k
            or self.per_request
            or self.per_second
        )

    def shown(self) -> dict[str, Any]:
        """The price as ``/v1/models`` shows it: rates as decimal strings."""
        return {
            "input_per_1k": _plain(self.input_per_1k),
            "output_per_1k": _plain(self.output_per_1k),
            "per_request": _plain(self.per_request),
            "per_second": _plain(self.per_second),
            "unit": str(self.unit),
            "input_free": self.input_free,
        }

    def cost(self, usage: Usage) -> int:
        """Micro-units ``usage`` costs."""
        billable_input = max(0, usage.input_units - self.input_free)
        exact = (
            self.per_request
            + self.input_per_1k * billable_input / 1000
            + self.output_per_1k * usage.output_units / 1000
            + self.per_second * usage.seconds
        )
        return int((exact * MICRO).quantize(Decimal(1), rounding=ROUND_HALF_UP))

    def output_affordable(self, input_units: int, micro: int) -> int:
        """The most output units ``micro`` pays for after the request's input
        cost (0 when it does not even cover that, or one unit of output).
        Without an output price every amount buys unlimited output: -1."""
        fixed = self.cost(Usage(input_units, 0))
        if not self.output_per_1k:
            return -1 if micro >= fixed else 0
        left = Decimal(micro - fixed) / MICRO
        if left <= 0:
            return 0
        units = int(left * 1000 / self.output_per_1k)
        # The rounding of cost() may let one more unit through: never fewer.
        while units > 0 and self.cost(Usage(input_units, units)) > micro:
            units -= 1
        return units


def _plain(rate: Decimal) -> str:
    """A rate without exponent or trailing zeros: ``"0.0003"``, ``"10"``."""
    text = format(rate, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def count_units(text: str, unit: PriceUnit, tokens: int) -> int:
    """A text's size in ``unit``: code points for chars, else ``tokens``."""
    return len(text) if unit == PriceUnit.CHARS else tokens
