"""The benchmark's and the A/B tool's smoke runs: seconds, not minutes; they check
correctness, not timings."""

from __future__ import annotations

import subprocess
import sys

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
