"""``make bench``'s retention run: Redis memory is bounded by the replay window.

100,000 short jobs go through llmq (started as ``make bench`` starts it, with a
30-second replay window), as fast as it takes them. Redis's ``used_memory`` is
sampled throughout: before, at its peak, when the last job finished, and once
the window has closed on every job and each is in the database. The run checks
that memory returns to within a few MB of where it started, and reports what a
job costs in Redis while in its window and in the database afterwards.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click
import redis
import sqlalchemy

from bench.report import markdown_row
from bench.system import System, run_load

#: The replay window of this run (LLMQ_EVENTS_TTL_SECONDS).
WINDOW_SECONDS = 30
#: Jobs pushed through.
JOBS = 100_000
#: Connections of the load client.
CONCURRENCY = 32
#: How far above its start Redis may end (MB).
SETTLE_MB = 5.0
#: Longest wait for every job to be written and dropped after the load.
DRAIN_SECONDS = 600


@dataclass
class RetentionResult:
    jobs: int
    wall: float
    errors: int
    start_mb: float
    peak_mb: float
    end_of_load_mb: float
    settled_mb: float
    held_at_end: int
    written: int
    database_bytes: int
    drain_seconds: float

    @property
    def redis_bytes_per_held_job(self) -> float:
        return (self.end_of_load_mb - self.start_mb) * 2**20 / max(1, self.held_at_end)

    def markdown(self) -> str:
        head = [
            "jobs",
            "req/s",
            "errors",
            "Redis MB: start",
            "peak",
            "end of load",
            "after window",
            "KB per job held",
            "DB bytes per job",
            "drain s",
        ]
        row = [
            f"{self.jobs:,}",
            f"{self.jobs / self.wall:,.0f}",
            str(self.errors),
            f"{self.start_mb:.1f}",
            f"{self.peak_mb:.1f}",
            f"{self.end_of_load_mb:.1f}",
            f"{self.settled_mb:.1f}",
            f"{self.redis_bytes_per_held_job / 1024:.1f}",
            f"{self.database_bytes / max(1, self.written):,.0f}",
            f"{self.drain_seconds:.0f}",
        ]
        return "\n".join(
            [markdown_row(head), markdown_row(["---"] * len(head)), markdown_row(row)]
        )


def _used_mb(client: redis.Redis) -> float:
    return int(client.info("memory")["used_memory"]) / 2**20


class _Peak(threading.Thread):
    def __init__(self, client: redis.Redis) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.peak = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            self.peak = max(self.peak, _used_mb(self.client))


def _database(system: System) -> tuple[int, int]:
    """Jobs in the database and its size on disk (the SQLite file and its WAL)."""
    files = list(system.workdir.glob("bench.sqlite3*"))
    engine = sqlalchemy.create_engine(f"sqlite:///{system.workdir / 'bench.sqlite3'}")
    with engine.connect() as conn:
        count = int(conn.scalar(sqlalchemy.text("select count(*) from jobs")) or 0)
    engine.dispose()
    return count, sum(f.stat().st_size for f in files)


def run_retention(jobs: int = JOBS, window: int = WINDOW_SECONDS) -> RetentionResult:
    """Push ``jobs`` through a fresh llmq and follow Redis's memory to the end."""
    with tempfile.TemporaryDirectory(prefix="llmq-retention-") as tmp:
        system = System(Path(tmp), env={"LLMQ_EVENTS_TTL_SECONDS": str(window)})
        try:
            system.start()
            client = redis.Redis.from_url(system.redis_url)
            start_mb = _used_mb(client)
            peak = _Peak(client)
            peak.start()
            spec = {
                "host": "127.0.0.1",
                "port": system.web_port,
                "path": "/v1/chat/completions",
                "headers": {"Authorization": f"Bearer {system.key}"},
                "body": {
                    "model": "bench-model",
                    "messages": [{"role": "user", "content": "hi"}],
                    "bench": {"tokens": 1, "delay": 0},
                },
                "concurrency": CONCURRENCY,
                "requests": jobs // CONCURRENCY,
                "ramp": 0,
            }
            data = run_load(spec)
            end_of_load_mb = _used_mb(client)
            held = int(client.zcard("llmq:history:written")) + int(
                client.zcard("llmq:history:unwritten")
            )
            began = time.monotonic()
            while time.monotonic() - began < DRAIN_SECONDS:
                pending = client.zcard("llmq:history:written") + client.zcard(
                    "llmq:history:unwritten"
                )
                if not pending:
                    break
                time.sleep(1)
            drain = time.monotonic() - began
            time.sleep(2)
            peak.done.set()
            settled_mb = _used_mb(client)
            written, size = _database(system)
        finally:
            system.stop()
    done = len(data["samples"])
    errors = sum(1 for sample in data["samples"] if sample.get("error"))
    return RetentionResult(
        done,
        data["wall"],
        errors,
        start_mb,
        max(peak.peak, end_of_load_mb),
        end_of_load_mb,
        settled_mb,
        held,
        written,
        size,
        drain,
    )


def verdict(result: RetentionResult) -> str:
    settled = result.settled_mb - result.start_mb
    ok = settled <= SETTLE_MB and result.written == result.jobs and not result.errors
    return (
        f"retention: {'PASS' if ok else 'FAIL'} — Redis ended {settled:+.1f} MB from "
        f"its start (target <= {SETTLE_MB:.0f} MB), {result.written:,} of "
        f"{result.jobs:,} jobs in the database"
    )


@click.command()
@click.option("--jobs", default=JOBS, show_default=True)
@click.option("--window", default=WINDOW_SECONDS, show_default=True)
def main(jobs: int, window: int) -> None:
    """Only the retention run."""
    result = run_retention(jobs, window)
    click.echo(result.markdown() + "\n\n" + verdict(result))


if __name__ == "__main__":
    main()
