"""``make bench``'s bulk memory run: what a 50,000-line batch (the most a file
may hold) costs llmq's processes and Redis.

A fresh llmq (started as ``make bench`` starts it, shipped defaults) runs one
batch on the bench's unlimited model, as fast as it takes it. The resident
memory of each of llmq's process groups (web; the Celery workers with their
launcher; the batch dispatcher; the retention process) and Redis's
``used_memory`` and key count are read before the batch, sampled for their peak
while it runs, and read again once it has completed. Finished jobs stay in Redis
for the replay window (``LLMQ_EVENTS_TTL_SECONDS``, an hour by default), so
"after" holds the batch's jobs; the retention run shows them leave.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.batch import Api, BatchRun, check_output, run_batch
from bench.procstats import cpu_seconds, rss_mb
from bench.report import markdown_row
from bench.system import Sampler, System, redis_mb

#: Lines of the batch: the most one input file may hold (API.md section 6).
LINES = 50_000
#: The bench's model with no limits (bench/system.py).
MODEL = "bench-model"
REPLY_TOKENS = 20
#: Longest the batch may take before the run gives up (seconds).
TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True)
class Memory:
    """Resident MiB of each process group, and Redis's ``used_memory`` (MiB)
    and keys, at one moment (or their peaks)."""

    rss: dict[str, float]
    redis_mb: float
    #: Not sampled for the peak.
    redis_keys: int | None


@dataclass
class MemoryResult:
    """The batch, and memory before, at peak and after."""

    run: BatchRun
    before: Memory
    peak: Memory
    after: Memory
    #: CPU % of each process group over the batch's time (100 = one core).
    cpu: dict[str, float]

    def markdown(self) -> str:
        run = self.run
        head = ["lines", "done in s", "batch rpm", "problems"]
        head += [f"CPU% {name}" for name in self.cpu]
        row = [
            f"{run.lines:,}",
            f"{run.seconds:.1f}",
            f"{run.requests_per_minute:,.0f}",
            "; ".join(run.problems) or "none",
            *(f"{value * 100:.0f}" for value in self.cpu.values()),
        ]
        memory = ["MiB", *self.before.rss, "Redis used_memory", "Redis keys"]
        rows = [
            [
                name,
                *(f"{mb:.0f}" for mb in at.rss.values()),
                f"{at.redis_mb:.1f}",
                "" if at.redis_keys is None else f"{at.redis_keys:,}",
            ]
            for name, at in (
                ("before", self.before),
                ("peak", self.peak),
                ("after", self.after),
            )
        ]
        return "\n".join(
            [
                markdown_row(head),
                markdown_row(["---"] * len(head)),
                markdown_row(row),
                "",
                markdown_row(memory),
                markdown_row(["---"] * len(memory)),
                *(markdown_row(r) for r in rows),
            ]
        )


def _memory(client: redis.Redis, roles: dict[str, list[int]]) -> Memory:
    return Memory(
        {name: rss_mb(pids) for name, pids in roles.items()},
        redis_mb(client.info("memory")),
        int(client.dbsize()),
    )


def run_bulk_memory(lines: int = LINES) -> MemoryResult:
    """Run one ``lines``-line batch through a fresh llmq, following its memory."""
    with tempfile.TemporaryDirectory(prefix="llmq-bulk-memory-") as tmp:
        system = System(Path(tmp))
        try:
            system.start()
            client = redis.Redis.from_url(system.redis_url)
            groups = system.roles()
            llmq = {k: v for k, v in groups.items() if k not in ("redis", "upstream")}
            before = _memory(client, llmq)
            cpu = {name: cpu_seconds(pids) for name, pids in groups.items()}
            sampler = Sampler(system.redis_url, llmq)
            sampler.start()
            api = Api(system.web_port, system.key)
            try:
                run = run_batch(api, lines, MODEL, REPLY_TOKENS, TIMEOUT_SECONDS)
                for name, pids in groups.items():
                    cpu[name] = (cpu_seconds(pids) - cpu[name]) / run.seconds
            finally:
                sampler.stop()
            after = _memory(client, llmq)
            run.problems = check_output(api, run.batch, lines, REPLY_TOKENS)
        finally:
            system.stop()
    peak = Memory(sampler.peak_rss, sampler.peak_redis_mb, None)
    return MemoryResult(run, before, peak, after, cpu)
