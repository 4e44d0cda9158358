"""The benchmark's and the A/B tool's smoke runs: seconds, not minutes; they check
correctness, not timings."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from bench.report import Result, ratios
from bench.scenarios import SMOKE
from bench.system import _load_result
from tests.conftest import ROOT


def test_the_benchmark_runs_and_every_token_arrives() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all correct" in result.stdout
    assert "| scale | llmq |" in result.stdout
    assert "| scale | " in result.stdout.split("llmq against direct:")[1]


def test_the_ab_comparison_runs_the_base_and_this_build_in_turn() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.ab", "--smoke", "--rounds", "1", "--repeat", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" | ")[1] for line in lines if line.startswith("| 1 |")] == [
        "base",
        "this",
    ]
    assert any(line.startswith("base (HEAD): ") for line in lines)


def test_a_load_result_that_is_not_json_is_reported_with_what_came() -> None:
    out = subprocess.CompletedProcess(
        [], 0, '{"wall": 1.0,\n"cpu" 2}', "Traceback: something"
    )
    with pytest.raises(click.ClickException) as caught:
        _load_result(out)
    assert '\'{"wall": 1.0,\\n"cpu" 2}\'' in caught.value.message
    assert "Traceback: something" in caught.value.message
    assert _load_result(subprocess.CompletedProcess([], 0, '{"wall": 1.0}', "")) == {
        "wall": 1.0
    }


def test_the_ratio_table_sets_each_scenario_through_llmq_against_direct() -> None:
    def result(mode: str, ttft: float, total: float, wall: float) -> Result:
        samples = [{"ttft": ttft, "total": total, "tokens": 5, "error": None}] * 4
        return Result(SMOKE[0], mode, wall, samples, {})

    table = ratios(
        [result("direct", 0.001, 0.002, 1.0), result("llmq", 0.004, 0.005, 2.0)]
    )
    header, _, row = table.splitlines()
    assert header.startswith("| scenario | added TTFT p50 ms |")
    # TTFT +3 ms (4x), total 2.5x, half the tokens/s and req/s (twice the wall time)
    assert row == "| unloaded | 3.0 | 3.0 | 4.00 | 2.50 | 0.50 | 0.50 |"
