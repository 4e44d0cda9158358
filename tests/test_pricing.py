"""Money and prices: exact parsing, formatting and a job's cost (API.md section 8)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.accounts.pricing import (
    MICRO,
    MoneyError,
    Price,
    PriceUnit,
    Usage,
    count_units,
    format_money,
    parse_money,
)
from common.catalog import CatalogError, load_catalog

#: Seed 000: 1 per 100 characters of output; 1 per 200 characters of prompt
#: beyond the first 500.
SEED_000 = Price(
    unit=PriceUnit.CHARS,
    output_per_1k=Decimal(10),
    input_per_1k=Decimal(5),
    input_free=500,
)


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("0", 0),
        ("12.5", 12_500_000),
        ("123.0165", 123_016_500),
        ("0.000001", 1),
        ("-2.5", -2_500_000),
        (3, 3_000_000),
        (Decimal("1e-6"), 1),
        ("999999999999.999999", 999_999_999_999_999_999),
    ],
)
def test_money_parses_exactly(text: object, micro: int) -> None:
    assert parse_money(text) == micro


@pytest.mark.parametrize(
    "bad",
    [12.5, 0.1, True, "abc", "", "NaN", "Infinity", "0.0000001", "1e12", None, [1]],
)
def test_what_is_not_exact_money_is_refused(bad: object) -> None:
    with pytest.raises(MoneyError):
        parse_money(bad)


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "0"),
        (123_016_500, "123.0165"),
        (12_500_000, "12.5"),
        (1, "0.000001"),
        (-2_500_000, "-2.5"),
        (7_000_000, "7"),
    ],
)
def test_money_is_shown_as_a_decimal_string(micro: int, text: str) -> None:
    assert format_money(micro) == text


@given(st.integers(min_value=-(10**18) + 1, max_value=10**18 - 1))
def test_formatting_and_parsing_round_trip(micro: int) -> None:
    assert parse_money(format_money(micro)) == micro


def test_seed_000s_rule_with_its_numbers() -> None:
    # 300 characters of output: 3 credits; a 500-character prompt is free.
    assert SEED_000.cost(Usage(500, 300)) == 3 * MICRO
    # 900 characters of prompt: 400 beyond 500, at 1 per 200 = 2 credits.
    assert SEED_000.cost(Usage(900, 0)) == 2 * MICRO
    # Both at once, and a part of a hundred charged in proportion.
    assert SEED_000.cost(Usage(700, 150)) == MICRO + MICRO + MICRO // 2


def test_a_price_adds_its_parts_and_rounds_once_half_up() -> None:
    price = Price(
        input_per_1k=Decimal("0.0003"),
        output_per_1k=Decimal("0.0006"),
        per_request=Decimal("0.01"),
        per_second=Decimal("0.002"),
    )
    # 0.01 + 1000 * 0.0000003 + 2000 * 0.0000006 + 1.5 * 0.002
    assert price.cost(Usage(1000, 2000, Decimal("1.5"))) == 10_000 + 300 + 1200 + 3000
    # 1 token in: 0.3 micro-units, rounded once: 0; 2 tokens: 0.6 -> 1.
    free_request = Price(input_per_1k=Decimal("0.0003"))
    assert free_request.cost(Usage(1, 0)) == 0
    assert free_request.cost(Usage(2, 0)) == 1
    assert Price().free and not price.free


def test_output_affordable_is_the_most_output_the_money_pays_for() -> None:
    price = Price(input_per_1k=Decimal(1), output_per_1k=Decimal(2))
    # 1,000 input units cost 1; 2 left buys 1,000 output units.
    assert price.output_affordable(1000, 3 * MICRO) == 1000
    assert price.cost(Usage(1000, 1000)) == 3 * MICRO
    assert price.output_affordable(1000, MICRO) == 0  # only the input
    assert price.output_affordable(1000, MICRO // 2) == 0
    assert Price(input_per_1k=Decimal(1)).output_affordable(10, MICRO) == -1


@given(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=10**10),
    st.decimals(min_value=Decimal("0.001"), max_value=100, places=6),
)
def test_what_output_affordable_allows_never_costs_more_than_the_money(
    input_units: int, micro: int, per_1k: Decimal
) -> None:
    price = Price(input_per_1k=per_1k, output_per_1k=per_1k * 3)
    units = price.output_affordable(input_units, micro)
    if units > 0:
        assert price.cost(Usage(input_units, units)) <= micro
        assert price.cost(Usage(input_units, units + 2)) > micro


def test_units_are_code_points_for_chars_and_tokens_otherwise() -> None:
    assert count_units("你好, llmq", PriceUnit.CHARS, tokens=3) == 8
    assert count_units("你好, llmq", PriceUnit.TOKENS, tokens=3) == 3


def test_a_catalog_price_reads_its_rates_exactly_as_written(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "providers:\n  sim: {kind: simulated}\n"
        "models:\n"
        "  - id: a\n    provider: sim\n"
        "    price: {input_per_1k: 0.0003, output_per_1k: 0.0006}\n"
        "  - id: seed000\n    provider: sim\n"
        "    price: {unit: chars, output_per_1k: 10, input_per_1k: 5,\n"
        "            input_free: 500}\n",
        encoding="utf-8",
    )
    catalog = load_catalog(path, {})
    a, seed = catalog.models
    assert a.price.input_per_1k == Decimal("0.0003")
    assert a.price.cost(Usage(1000, 1000)) == 900  # 0.0003 + 0.0006, in micro-units
    assert seed.price == SEED_000
    assert seed.price.shown() == {
        "input_per_1k": "5",
        "output_per_1k": "10",
        "per_request": "0",
        "per_second": "0",
        "unit": "chars",
        "input_free": 500,
    }


@pytest.mark.parametrize(
    "price",
    ["{unit: bytes}", "{input_per_1k: -1}", "{input_per_1k: true}", "{input_free: -5}"],
)
def test_a_price_that_is_not_one_is_refused(tmp_path: Path, price: str) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "providers:\n  sim: {kind: simulated}\n"
        f"models:\n  - {{id: a, provider: sim, price: {price}}}\n",
        encoding="utf-8",
    )
    with pytest.raises(CatalogError):
        load_catalog(path, {})
