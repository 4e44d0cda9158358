"""What a benchmark run measured, and its tables: results, llmq against direct,
and each target's verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.scenarios import Scenario


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank below); NaN if none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Result:
    """What one scenario did in one mode."""

    scenario: Scenario
    mode: str
    wall: float
    samples: list[dict[str, Any]]
    cpu: dict[str, float]
    peak_rss_mb: float = 0.0
    peak_redis_clients: int = 0
    errors: int = field(init=False)

    def __post_init__(self) -> None:
        self.errors = sum(1 for s in self.samples if s["error"])

    def ms(self, key: str, q: float) -> float:
        values = [s[key] for s in self.samples if s[key] is not None and not s["error"]]
        return percentile(values, q) * 1000

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.samples)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.wall

    @property
    def requests_per_second(self) -> float:
        return len(self.samples) / self.wall


def _row(result: Result) -> list[str]:
    cpu = result.cpu
    return [
        result.scenario.name,
        result.mode,
        str(len(result.samples)),
        str(result.errors),
        *(f"{result.ms('ttft', q):.1f}" for q in (0.5, 0.9, 0.99)),
        *(f"{result.ms('total', q):.0f}" for q in (0.5, 0.9, 0.99)),
        f"{result.tokens_per_second:,.0f}",
        f"{result.requests_per_second:,.0f}",
        f"{result.peak_rss_mb:.0f}" if result.mode == "llmq" else "",
        str(result.peak_redis_clients) if result.mode == "llmq" else "",
        *(
            f"{cpu.get(name, 0) * 100:.0f}"
            for name in ("web", "worker", "redis", "upstream", "client")
        ),
    ]


HEADER = [
    "scenario",
    "mode",
    "requests",
    "errors",
    "TTFT p50 ms",
    "p90",
    "p99",
    "total p50 ms",
    "p90",
    "p99",
    "tokens/s",
    "req/s",
    "llmq RSS MB",
    "Redis conns",
    "CPU% web",
    "worker",
    "redis",
    "upstream",
    "client",
]


def markdown_row(cells: list[str]) -> str:
    """One line of a Markdown table."""
    return "| " + " | ".join(cells) + " |"


def table(results: list[Result]) -> str:
    """The results as a Markdown table."""
    rows = [HEADER, ["---"] * len(HEADER)] + [_row(r) for r in results]
    return "\n".join(markdown_row(row) for row in rows)


RATIO_HEADER = [
    "scenario",
    "added TTFT p50 ms",
    "added TTFT p99 ms",
    "TTFT p50 llmq/direct",
    "total p50 llmq/direct",
    "tokens/s llmq/direct",
    "req/s llmq/direct",
]


def _compared(results: list[Result]) -> list[tuple[Result, Result]]:
    """Each scenario that ran both ways, as (llmq, direct), in the order run."""
    by = {(r.scenario.name, r.mode): r for r in results}
    pairs = []
    for name in dict.fromkeys(r.scenario.name for r in results):
        llmq, direct = by.get((name, "llmq")), by.get((name, "direct"))
        if llmq is not None and direct is not None:
            pairs.append((llmq, direct))
    return pairs


def _added_ttft(llmq: Result, direct: Result, q: float) -> float:
    return llmq.ms("ttft", q) - direct.ms("ttft", q)


def _times(measure: float, base: float) -> str:
    return f"{measure / base:,.2f}" if base else "—"


def ratios(results: list[Result]) -> str:
    """Each scenario through llmq against the same scenario direct, as a table."""
    rows = [RATIO_HEADER, ["---"] * len(RATIO_HEADER)]
    for llmq, direct in _compared(results):
        rows.append(
            [
                llmq.scenario.name,
                f"{_added_ttft(llmq, direct, 0.5):.1f}",
                f"{_added_ttft(llmq, direct, 0.99):.1f}",
                _times(llmq.ms("ttft", 0.5), direct.ms("ttft", 0.5)),
                _times(llmq.ms("total", 0.5), direct.ms("total", 0.5)),
                _times(llmq.tokens_per_second, direct.tokens_per_second),
                _times(llmq.requests_per_second, direct.requests_per_second),
            ]
        )
    return "\n".join(markdown_row(row) for row in rows)


def verdicts(results: list[Result]) -> list[str]:
    """Each scenario's target, what was measured, and whether it holds."""
    lines = []
    for llmq, direct in _compared(results):
        scenario = llmq.scenario
        added50 = _added_ttft(llmq, direct, 0.5)
        added99 = _added_ttft(llmq, direct, 0.99)
        ratio = llmq.tokens_per_second / max(direct.tokens_per_second, 1e-9)
        checks = {
            "unloaded": (added50 <= 5, f"added TTFT p50 {added50:.1f} ms"),
            "realistic": (
                added50 <= 10 and added99 <= 50 and ratio >= 0.95 and llmq.errors == 0,
                f"added TTFT p50 {added50:.1f} ms, p99 {added99:.1f} ms, "
                f"tokens/s {ratio:.0%} of direct, {llmq.errors} errors",
            ),
            "capacity": (
                llmq.requests_per_second >= 700,
                f"{llmq.requests_per_second:,.0f} req/s",
            ),
            "saturation": (
                llmq.tokens_per_second >= 10_000,
                f"{llmq.tokens_per_second:,.0f} tokens/s",
            ),
            "scale": (
                llmq.errors == 0
                and llmq.ms("ttft", 0.99) <= 1000
                and llmq.peak_rss_mb <= 1024
                and llmq.peak_redis_clients < scenario.concurrency / 4,
                f"{llmq.errors} errors, TTFT p99 {llmq.ms('ttft', 0.99):.0f} ms, "
                f"{llmq.peak_rss_mb:.0f} MB, "
                f"{llmq.peak_redis_clients} Redis connections",
            ),
        }
        ok, measured = checks[scenario.shape]
        lines.append(verdict_row(scenario.name, scenario.target, measured, ok))
    head = "| scenario | target | measured | holds |\n| --- | --- | --- | --- |"
    return [head, *lines]


def verdict_row(name: str, target: str, measured: str, ok: bool) -> str:
    """One row of the verdicts table."""
    return markdown_row([name, target, measured, "yes" if ok else "**no**"])


def smoke_problems(results: list[Result]) -> list[str]:
    """Correctness only: no errors, and every token arrived."""
    problems = []
    for r in results:
        if r.errors:
            problems.append(f"{r.scenario.name}/{r.mode}: {r.errors} errors")
        short = [s for s in r.samples if s["tokens"] != r.scenario.tokens]
        if short:
            problems.append(
                f"{r.scenario.name}/{r.mode}: {len(short)} replies short of "
                f"{r.scenario.tokens} tokens"
            )
    return problems
