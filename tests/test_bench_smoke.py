"""The benchmark's smoke run: seconds, not minutes; checks correctness, not timings."""

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
