"""The worker line as shipped: one process per core, 1,000 jobs in flight each."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from common.config import DEFAULT_WORKER_CONCURRENCY
from tests.conftest import (
    ROOT,
    START_TIMEOUT_SECONDS,
    Stack,
    bin_path,
    chat_body,
    start_process,
    stop_process,
    wait_until,
    web_on_own_redis,
)
from workers.launcher import BULK_NICENESS, STARTUP_SECONDS, cores

#: Streams held open at once against a single worker process.
STREAMS = 300


def procfile_worker() -> str:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return next(
        line.split(":", 1)[1].strip() for line in lines if line[:7] == "worker:"
    )


def celery_workers(launcher: subprocess.Popen[bytes]) -> list[psutil.Process]:
    shell = psutil.Process(launcher.pid)  # ``sh -c exec ...`` is the launcher itself
    return [p for p in shell.children() if "celery" in " ".join(p.cmdline())]


@contextlib.contextmanager
def launched(
    stack: Stack, logdir: Path, name: str, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The Procfile's worker line, as honcho and docker-compose run it; stopped
    after, with any worker it leaves killed (the test's Redis goes next)."""
    log = logdir / f"{name}.log"
    path = f"{Path(bin_path('python')).parent}:{os.environ.get('PATH', '')}"
    proc = start_process(
        ["sh", "-c", f"exec {procfile_worker()}"],
        {**stack.env, "PATH": path, **env},
        log,
    )
    try:
        yield proc, log
    finally:
        left = []
        with contextlib.suppress(psutil.NoSuchProcess):
            left = psutil.Process(proc.pid).children(recursive=True)
        stop_process(proc)
        for worker in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()


def wait_ready(log: Path, count: int) -> None:
    wait_until(
        lambda: log.read_bytes().count(b" ready.") >= count,
        START_TIMEOUT_SECONDS * 2,
        f"{count} Celery worker(s) to be ready (see {log})",
    )


@pytest.fixture
def bare(
    catalog_path: Path, logdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A web on a Redis of its own, with no worker yet."""
    with web_on_own_redis(
        f"launch-{uuid.uuid4().hex[:6]}", catalog_path, logdir, tmp_path_factory
    ) as (stack, _):
        yield stack


def test_the_worker_line_starts_one_worker_per_core_with_the_default_slots(
    bare: Stack, logdir: Path
) -> None:
    with launched(bare, logdir, "launch-cores") as (launcher, log):
        wait_ready(log, cores() + 1)
        text = log.read_text()
        assert f"starting {cores()} worker process(es) and 1 for the bulk" in text
        banners = re.findall(r"concurrency:\s+(\d+) \(gevent\)", text)
        assert banners == [str(DEFAULT_WORKER_CONCURRENCY)] * (cores() + 1)
        assert DEFAULT_WORKER_CONCURRENCY == 1000
        workers = celery_workers(launcher)
        queues = sorted(p.cmdline()[p.cmdline().index("--queues") + 1] for p in workers)
        assert queues == ["bulk"] + ["interactive"] * cores()
        # The bulk worker yields the CPU to the interactive ones.
        assert sorted(p.nice() for p in workers) == [0] * cores() + [BULK_NICENESS]
        children = psutil.Process(launcher.pid).children()
        for housekeeper in ("workers.retention", "workers.batches"):
            assert [housekeeper in p.cmdline() for p in children].count(True) == 1


def test_300_streams_reach_the_upstream_at_once_through_one_worker_process(
    bare: Stack, logdir: Path, upstream: str
) -> None:
    """As shipped, only 200 went upstream at a time and the rest waited for a
    slot with the CPU idle; a job waiting for a slot shows its queue_position."""
    with launched(bare, logdir, "launch-one", LLMQ_WORKER_PROCESSES="1") as (
        launcher,
        log,
    ):
        wait_ready(log, 1)
        auth = {"Authorization": f"Bearer {bare.key()}"}
        tag = uuid.uuid4().hex
        body = chat_body(fake={"tag": tag, "tokens": 3, "delay": 2})

        def submit(_: int) -> str:
            resp = requests.post(
                f"{bare.url}/v1/jobs", json=body, headers=auth, timeout=10
            )
            return str(resp.json()["id"])

        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(submit, range(STREAMS)))

        def stats() -> dict[str, int]:
            got = requests.get(f"{upstream}/_stats/{tag}", timeout=5).json()
            return dict(got) if isinstance(got, dict) else {}

        wait_until(
            lambda: stats().get("max_inflight", 0) >= STREAMS,
            15,
            f"{STREAMS} streams open upstream at once",
        )
        done = [
            requests.get(
                f"{bare.url}/v1/jobs/{job_id}?wait=30", headers=auth, timeout=40
            ).json()["status"]
            for job_id in ids
        ]
        assert done == ["succeeded"] * STREAMS


def test_a_job_waiting_for_a_slot_shows_its_queue_position(
    bare: Stack, logdir: Path
) -> None:
    with launched(
        bare,
        logdir,
        "launch-narrow",
        LLMQ_WORKER_PROCESSES="1",
        LLMQ_WORKER_CONCURRENCY="2",
    ) as (launcher, log):
        wait_ready(log, 1)
        auth = {"Authorization": f"Bearer {bare.key()}"}
        body = chat_body(fake={"tokens": 2, "first_delay": 3})
        ids = [
            requests.post(
                f"{bare.url}/v1/jobs", json=body, headers=auth, timeout=10
            ).json()["id"]
            for _ in range(4)
        ]

        def jobs() -> list[dict[str, object]]:
            return [
                requests.get(
                    f"{bare.url}/v1/jobs/{job_id}", headers=auth, timeout=10
                ).json()
                for job_id in ids
            ]

        def two_running() -> list[dict[str, object]] | None:
            got = jobs()
            return got if [j["status"] for j in got[:2]] == ["running"] * 2 else None

        running = wait_until(two_running, 10, "the first two jobs to take both slots")
        assert [j["status"] for j in running[2:]] == ["queued", "queued"]
        assert [j["queue_position"] for j in running[2:]] == [1, 2]


def test_sigterm_stops_every_worker_and_a_killed_one_is_started_again(
    bare: Stack, logdir: Path
) -> None:
    with launched(
        bare,
        logdir,
        "launch-restart",
        LLMQ_WORKER_PROCESSES="2",
        LLMQ_BULK_WORKER_PROCESSES="0",
    ) as (
        launcher,
        log,
    ):
        wait_ready(log, 2)
        first, second = celery_workers(launcher)
        wait_until(
            lambda: first.create_time() < time.time() - STARTUP_SECONDS - 1,
            STARTUP_SECONDS * 2,
            "the workers to be past their start-up",
        )
        first.send_signal(signal.SIGKILL)
        wait_ready(log, 3)
        workers = celery_workers(launcher)
        assert len(workers) == 2 and first.pid not in {w.pid for w in workers}
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(60) == 0
        for worker in workers:
            assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE


def test_a_killed_launcher_leaves_no_worker_behind(bare: Stack, logdir: Path) -> None:
    with launched(
        bare,
        logdir,
        "launch-killed",
        LLMQ_WORKER_PROCESSES="1",
        LLMQ_BULK_WORKER_PROCESSES="0",
    ) as (
        launcher,
        log,
    ):
        wait_ready(log, 1)
        [worker] = celery_workers(launcher)
        launcher.kill()
        launcher.wait(5)
        psutil.wait_procs([worker], timeout=START_TIMEOUT_SECONDS)
        assert not worker.is_running(), "the worker outlived its killed launcher"
