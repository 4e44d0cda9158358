"""``make bench``'s bulk scenario: a 10,000-line batch on a provider limited to
6,000 rpm, and what it does to interactive calls to the same provider.

A batch has no direct counterpart (the upstream has no batch API), so this runs
through llmq only. Interactive TTFT is measured with streams to the batch's own
model, so they compete with the batch for the same provider limit: first
unloaded, then while the batch runs. The streams come at a steady pace (a few a
second, a few per cent of the limit), not back to back: at concurrency 4 they
would ask more than the 100 requests a second the limit allows on their own,
and would measure the rate limiter instead of whether interactive calls go first.
The batch's time runs from its creation to the first read that sees it
``completed``; its output file must answer every line once, in input order.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass

from bench.batch import Api, BatchRun, check_output, run_batch
from bench.load import REQUEST_TIMEOUT_SECONDS, Connection, Sample
from bench.procstats import cpu_seconds
from bench.report import markdown_row, percentile, verdict_row
from bench.system import BULK_MODEL, BULK_RPM, System

#: Lines of the batch, full size and in ``--smoke``.
LINES = 10_000
SMOKE_LINES = 200
#: Tokens of each reply, batch and interactive alike.
REPLY_TOKENS = 20
#: Interactive streams: connections, and the seconds between one connection's
#: starts (4 a second in all: 4 % of the limit).
PROBE_CONCURRENCY = 2
PROBE_INTERVAL_SECONDS = 0.5
#: Unloaded streams measured, after a few that warm up connections and are not.
UNLOADED_PROBES = 200
SMOKE_PROBES = 4
WARMUP_PROBES = 10
#: The targets: the batch's time against what the limit allows, and interactive
#: TTFT p99 while it runs against unloaded.
SLACK = 1.10
TTFT_FACTOR = 2.0
TARGET = (
    "done within 110 % of the time the limit allows; "
    "interactive TTFT p99 during it <= 2x unloaded"
)


class Probe(threading.Thread):
    """Interactive streams to the bulk model at a steady pace, each kept with the
    (monotonic) time it began, until stopped or ``per_connection`` each."""

    def __init__(self, port: int, key: str, per_connection: int | None = None) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.headers = f"Authorization: Bearer {key}\r\n"
        self.per_connection = per_connection
        self.samples: list[tuple[float, Sample]] = []
        self._halt = threading.Event()
        self.body = json.dumps(
            {
                "model": BULK_MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "bench": {"tokens": REPLY_TOKENS, "delay": 0},
            }
        ).encode()

    def run(self) -> None:
        asyncio.run(self._all())

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def between(self, start: float, end: float) -> list[Sample]:
        """The streams that began at ``start`` or later and ended by ``end``."""
        return [
            s for began, s in self.samples if began >= start and began + s.total <= end
        ]

    async def _all(self) -> None:
        start = time.monotonic()
        spacing = PROBE_INTERVAL_SECONDS / PROBE_CONCURRENCY
        await asyncio.gather(
            *(self._connection(start + n * spacing) for n in range(PROBE_CONCURRENCY))
        )

    async def _connection(self, due: float) -> None:
        conn = Connection("127.0.0.1", self.port)
        done = 0
        while not self._halt.is_set() and done != self.per_connection:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            due += PROBE_INTERVAL_SECONDS
            began = time.monotonic()
            try:
                sample = await asyncio.wait_for(
                    conn.call("/v1/chat/completions", self.headers, self.body, True),
                    REQUEST_TIMEOUT_SECONDS,
                )
            except TimeoutError:
                sample = Sample(None, time.monotonic() - began, 0, "timeout")
                await conn.close()
            self.samples.append((began, sample))
            done += 1
        await conn.close()


def _ttft_ms(samples: list[Sample], q: float) -> float:
    return percentile([s.ttft for s in samples if s.ttft is not None], q) * 1000


def _faults(samples: list[Sample]) -> int:
    return sum(1 for s in samples if s.error or s.tokens != REPLY_TOKENS)


@dataclass
class BulkResult:
    """The batch, and interactive streams unloaded and during it."""

    run: BatchRun
    unloaded: list[Sample]
    during: list[Sample]
    #: CPU % of each process group over the batch's time (100 = one core).
    cpu: dict[str, float]

    @property
    def allowed_seconds(self) -> float:
        """What the provider's limit allows for the batch's lines."""
        return self.run.lines * 60 / BULK_RPM

    @property
    def provider_rpm(self) -> float:
        """Batch and interactive requests per minute over the batch's time."""
        return (self.run.lines + len(self.during)) * 60 / self.run.seconds

    def problems(self) -> list[str]:
        """Correctness only (what ``--smoke`` checks)."""
        problems = [f"bulk: {p}" for p in self.run.problems]
        for phase, samples in (("unloaded", self.unloaded), ("during", self.during)):
            if faults := _faults(samples):
                problems.append(f"bulk: {faults} interactive streams {phase} failed")
        return problems

    def markdown(self) -> str:
        head = [
            "lines",
            "limit rpm",
            "limit allows s",
            "done in s",
            "validating s",
            "requests s",
            "finishing s",
            "batch rpm",
            "provider rpm",
            "interactive TTFT p50 ms unloaded",
            "p99 unloaded",
            "p50 during",
            "p99 during",
            "streams unloaded / during",
            "failed",
            *(f"CPU% {name}" for name in self.cpu),
        ]
        run = self.run
        row = [
            f"{run.lines:,}",
            f"{BULK_RPM:,}",
            f"{self.allowed_seconds:.0f}",
            f"{run.seconds:.1f}",
            f"{run.in_progress - run.created:.1f}",
            f"{run.all_counted - run.in_progress:.1f}",
            f"{run.ended - run.all_counted:.1f}",
            f"{run.requests_per_minute:,.0f}",
            f"{self.provider_rpm:,.0f}",
            *(f"{_ttft_ms(s, q):.1f}" for s in (self.unloaded,) for q in (0.5, 0.99)),
            *(f"{_ttft_ms(s, q):.1f}" for s in (self.during,) for q in (0.5, 0.99)),
            f"{len(self.unloaded)} / {len(self.during)}",
            str(_faults(self.unloaded) + _faults(self.during)),
            *(f"{value * 100:.0f}" for value in self.cpu.values()),
        ]
        rows = [head, ["---"] * len(head), row]
        return "\n".join(markdown_row(r) for r in rows)

    def verdict(self) -> str:
        """The verdicts table's row for the bulk scenario."""
        before, during = _ttft_ms(self.unloaded, 0.99), _ttft_ms(self.during, 0.99)
        problems = self.problems()
        ok = (
            self.run.seconds <= SLACK * self.allowed_seconds
            and during <= TTFT_FACTOR * before
            and not problems
        )
        measured = (
            f"{self.run.seconds:.1f} s for {self.allowed_seconds:.0f} s allowed "
            f"({self.run.seconds / self.allowed_seconds:.0%}); interactive TTFT "
            f"p99 {during:.1f} ms during, {before:.1f} ms unloaded "
            f"({during / before:.2f}x); "
            + (
                "; ".join(problems)
                if problems
                else "every line answered once, in order"
            )
        )
        return verdict_row("bulk", TARGET, measured, ok)


def _probe(system: System, streams: int) -> Probe:
    """``streams`` interactive streams at the probes' pace, run to the end."""
    probe = Probe(system.web_port, system.key, streams // PROBE_CONCURRENCY)
    probe.start()
    probe.join()
    return probe


def run_bulk(system: System, smoke: bool = False) -> BulkResult:
    """Measure interactive TTFT unloaded, then run the batch under the same
    interactive load; ``smoke``: a tiny batch, a few streams."""
    lines = SMOKE_LINES if smoke else LINES
    _probe(system, WARMUP_PROBES)
    unloaded = _probe(system, SMOKE_PROBES if smoke else UNLOADED_PROBES)
    roles = system.roles()
    before = {name: cpu_seconds(pids) for name, pids in roles.items()}
    probe = Probe(system.web_port, system.key)
    probe.start()
    api = Api(system.web_port, system.key)
    try:
        run = run_batch(
            api, lines, BULK_MODEL, REPLY_TOKENS, 60 + 3 * lines * 60 / BULK_RPM
        )
        cpu = {
            name: (cpu_seconds(pids) - before[name]) / run.seconds
            for name, pids in roles.items()
        }
    finally:
        probe.stop()
    run.problems = check_output(api, run.batch, lines, REPLY_TOKENS)
    return BulkResult(
        run,
        [sample for _, sample in unloaded.samples],
        probe.between(run.created, run.ended),
        cpu,
    )
