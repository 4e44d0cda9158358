"""``make ab``: one scenario through two builds of llmq, alternating, to compare them.

A whole ``make bench`` run swings by a quarter from one run to the next on a
shared machine, more than most changes move it. So a change is judged here by
alternating the builds: ``--rounds`` times, the ``--base`` revision (checked out
in a temporary git worktree) and then this working tree are each started as
``make bench`` starts llmq, warmed up with one run, and measured ``--repeat``
times through llmq. One line per run, then each build's range and mean.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import click

from bench.report import Result, markdown_row
from bench.scenarios import SCENARIOS, SMOKE, Scenario
from bench.system import ROOT, System

_COLUMNS = ["round", "build", "req/s", "tokens/s", "TTFT p50 ms", "p99", "errors"]
_CPU = ("web", "worker", "redis", "upstream", "client")


def _measure(
    root: Path, workdir: Path, scenario: Scenario, repeat: int
) -> list[Result]:
    """``repeat`` llmq runs of ``scenario`` on a fresh llmq from ``root``."""
    workdir.mkdir()
    system = System(workdir, root=root)
    try:
        system.start()
        system.run(scenario, "llmq")  # warm-up: connections, caches, imports
        return [system.run(scenario, "llmq") for _ in range(repeat)]
    finally:
        system.stop()


def _row(round_: int, build: str, result: Result) -> str:
    return markdown_row(
        [
            str(round_),
            build,
            f"{result.requests_per_second:,.0f}",
            f"{result.tokens_per_second:,.0f}",
            f"{result.ms('ttft', 0.5):.1f}",
            f"{result.ms('ttft', 0.99):.1f}",
            str(result.errors),
            *(f"{result.cpu.get(name, 0) * 100:.0f}" for name in _CPU),
        ]
    )


def _summary(build: str, results: list[Result]) -> str:
    def spread(values: list[float], unit: str) -> str:
        mean = sum(values) / len(values)
        return f"{min(values):,.1f}–{max(values):,.1f} {unit} (mean {mean:,.1f})"

    return (
        f"{build}: "
        + spread([r.requests_per_second for r in results], "req/s")
        + ", "
        + spread([r.tokens_per_second for r in results], "tokens/s")
        + ", TTFT p50 "
        + spread([r.ms("ttft", 0.5) for r in results], "ms")
        + f", {sum(r.errors for r in results)} errors"
    )


@click.command()
@click.option("--base", default="HEAD", show_default=True, help="Revision to compare.")
@click.option(
    "--scenario",
    "name",
    type=click.Choice([s.name for s in SCENARIOS]),
    default="capacity",
    show_default=True,
)
@click.option("--rounds", default=2, show_default=True, help="Alternations.")
@click.option("--repeat", default=3, show_default=True, help="Runs per build a round.")
@click.option("--smoke", is_flag=True, help="The tiny capacity scenario (for CI).")
def main(base: str, name: str, rounds: int, repeat: int, smoke: bool) -> None:
    """Compare the working tree with ``--base`` on one scenario, alternating."""
    scenario = next(
        (s for s in (SMOKE if smoke else SCENARIOS) if s.name == name), None
    )
    if scenario is None:
        raise click.UsageError(f"no smoke version of {name}")
    runs: dict[str, list[Result]] = {"base": [], "this": []}
    click.echo(markdown_row(_COLUMNS + [f"CPU% {_CPU[0]}", *_CPU[1:]]))
    click.echo(markdown_row(["---"] * (len(_COLUMNS) + len(_CPU))))
    with tempfile.TemporaryDirectory(prefix="llmq-ab-") as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--quiet", "--detach", str(tree), base],
            cwd=ROOT,
            check=True,
        )
        try:
            for round_ in range(1, rounds + 1):
                for build, root in (("base", tree), ("this", ROOT)):
                    workdir = Path(tmp) / f"{build}-{round_}"
                    for result in _measure(root, workdir, scenario, repeat):
                        runs[build].append(result)
                        click.echo(_row(round_, build, result))
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)],
                cwd=ROOT,
                check=False,
            )
    click.echo("")
    for build, results in runs.items():
        click.echo(_summary(f"{build} ({base})" if build == "base" else build, results))
    if any(r.errors for results in runs.values() for r in results):
        raise click.ClickException("some requests failed")


if __name__ == "__main__":
    main()
