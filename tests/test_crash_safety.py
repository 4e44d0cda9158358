"""Killed, stopped and duplicated workers, a Redis restart: no job lost or run twice."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from common.config import load_settings
from common.queues import TASK_RUN_JOB
from tests.conftest import (
    RedisServer,
    Stack,
    chat_body,
    sse_events,
    start_worker,
    wait_until,
    web_on_own_redis,
)
from workers.celery_app import make_celery

#: Short leases so a dead worker's jobs are noticed within seconds.
LEASE_SECONDS = 2


@pytest.fixture(scope="module")
def crash(
    catalog_path: Path, logdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, RedisServer]]:
    """Web on its own Redis; each test starts (and kills) its own workers."""
    with web_on_own_redis(
        "crash",
        catalog_path,
        logdir,
        tmp_path_factory,
        LLMQ_LEASE_SECONDS=str(LEASE_SECONDS),
    ) as stack:
        yield stack


class Workers:
    """Workers started by one test, all stopped at its end."""

    def __init__(self, stack: Stack, logdir: Path) -> None:
        self.stack, self.logdir, self.procs = stack, logdir, []  # type: ignore[var-annotated]
        self.logs: dict[int, Path] = {}

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        name = f"crash-worker-{uuid.uuid4().hex[:6]}"
        proc = start_worker({**self.stack.env, **env}, self.logdir, name)
        self.procs.append(proc)
        self.logs[proc.pid] = self.logdir / f"{name}.log"
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def workers(crash: tuple[Stack, RedisServer], logdir: Path) -> Iterator[Workers]:
    pool = Workers(crash[0], logdir)
    yield pool
    pool.stop_all()


def submit(stack: Stack, auth: dict[str, str], **overrides: Any) -> str:
    resp = requests.post(
        f"{stack.url}/v1/jobs", json=chat_body(**overrides), headers=auth, timeout=10
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def job_of(stack: Stack, auth: dict[str, str], job_id: str) -> dict[str, Any]:
    return requests.get(  # type: ignore[no-any-return]
        f"{stack.url}/v1/jobs/{job_id}", headers=auth, timeout=10
    ).json()


def ended(
    stack: Stack, auth: dict[str, str], job_id: str, within: float
) -> dict[str, Any]:
    return wait_until(  # type: ignore[no-any-return]
        lambda: (
            (j := job_of(stack, auth, job_id))["status"]
            in ("succeeded", "failed", "cancelled")
            and j
        ),
        within,
        f"job {job_id} to end",
    )


def event_log(stack: Stack, auth: dict[str, str], job_id: str) -> list[tuple[str, Any]]:
    with requests.get(
        f"{stack.url}/v1/jobs/{job_id}/events", headers=auth, stream=True, timeout=30
    ) as resp:
        return [
            (e["event"], json.loads(e["data"]))
            for e in sse_events(resp)
            if "event" in e
        ]


def test_sigkill_under_50_running_jobs_loses_none(
    crash: tuple[Stack, RedisServer], workers: Workers
) -> None:
    stack, _ = crash
    auth = {"Authorization": f"Bearer {stack.key()}"}
    doomed = workers.start()
    body = {"fake": {"tokens": 60, "delay": 0.1}}  # 6 s each: all run at once
    with ThreadPoolExecutor(10) as pool:
        ids = list(pool.map(lambda _: submit(stack, auth, **body), range(50)))
    wait_until(
        lambda: all(job_of(stack, auth, i)["status"] == "running" for i in ids),
        20,
        "all 50 jobs to be running on the first worker",
    )
    workers.start()
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    jobs = [ended(stack, auth, job_id, 60) for job_id in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 50
    for job in jobs:
        assert job["result"]["choices"][0]["message"]["content"] == "".join(
            f"tok{i} " for i in range(60)
        )
        assert job["attempts"] >= 2
        log = event_log(stack, auth, job["id"])
        assert [name for name, _ in log].count("done") == 1
        assert {"status": "running", "reset": True} in [
            d for n, d in log if n == "status"
        ]


def test_a_redelivered_task_for_a_live_or_finished_job_does_nothing(
    crash: tuple[Stack, RedisServer], workers: Workers, upstream: str
) -> None:
    stack, _ = crash
    auth = {"Authorization": f"Bearer {stack.key()}"}
    workers.start()
    tag = uuid.uuid4().hex
    job_id = submit(stack, auth, fake={"tag": tag, "tokens": 10, "delay": 0.1})
    wait_until(
        lambda: job_of(stack, auth, job_id)["status"] == "running", 10, "running"
    )
    producer = make_celery(load_settings(stack.env))
    producer.send_task(TASK_RUN_JOB, args=[job_id], queue="interactive")
    done = ended(stack, auth, job_id, 30)
    producer.send_task(TASK_RUN_JOB, args=[job_id], queue="interactive")
    time.sleep(1.0)  # give the second duplicate time to be (not) run
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert job_of(stack, auth, job_id) == done
    assert requests.get(f"{upstream}/_stats/{tag}", timeout=5).json()["requests"] == 1
    names = [name for name, _ in event_log(stack, auth, job_id)]
    assert names.count("done") == 1


def test_an_orphaned_job_past_its_deadline_is_failed_by_the_reaper(
    crash: tuple[Stack, RedisServer], workers: Workers
) -> None:
    stack, _ = crash
    auth = {"Authorization": f"Bearer {stack.key()}"}
    doomed = workers.start()
    # brief-model: total 1.5 s, and the provider hangs.
    job_id = submit(stack, auth, model="brief-model", fake={"hang": 20})
    wait_until(
        lambda: job_of(stack, auth, job_id)["status"] == "running", 10, "running"
    )
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    workers.start()
    job = ended(stack, auth, job_id, 20)
    assert job["status"] == "failed" and job["error"]["code"] == "timeout"


def test_sigterm_lets_running_streams_finish(
    crash: tuple[Stack, RedisServer], workers: Workers
) -> None:
    stack, _ = crash
    auth = {"Authorization": f"Bearer {stack.key()}"}
    worker = workers.start(LLMQ_WORKER_GRACE_SECONDS="20")
    job_id = submit(stack, auth, fake={"tokens": 20, "delay": 0.1})
    wait_until(
        lambda: job_of(stack, auth, job_id)["status"] == "running", 10, "running"
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    job = job_of(stack, auth, job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 1


def test_sigterm_hands_unfinished_jobs_back_after_the_grace_period(
    crash: tuple[Stack, RedisServer], workers: Workers
) -> None:
    stack, _ = crash
    auth = {"Authorization": f"Bearer {stack.key()}"}
    stopping = workers.start(LLMQ_WORKER_GRACE_SECONDS="1")
    job_id = submit(stack, auth, fake={"tokens": 40, "delay": 0.1})
    wait_until(
        lambda: job_of(stack, auth, job_id)["status"] == "running", 10, "running"
    )
    workers.start()
    started = time.monotonic()
    stopping.send_signal(signal.SIGTERM)
    assert stopping.wait(20) == 0
    assert time.monotonic() - started < 8
    job = ended(stack, auth, job_id, 30)
    assert job["status"] == "succeeded"
    statuses = [d for n, d in event_log(stack, auth, job_id) if n == "status"]
    assert {"status": "queued", "reason": "worker shutdown"} in statuses
    assert {"status": "running", "reset": True} in statuses


def test_an_idle_worker_stops_on_sigterm_without_a_signal_handler_error(
    workers: Workers,
) -> None:
    # Idle, the worker's event loop is what the signal interrupts; nothing the
    # shutdown hook does there may block.
    worker = workers.start()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    log = workers.logs[worker.pid].read_text()
    assert "worker stopping" in log
    assert "Signal handler" not in log and "Traceback" not in log, log


def test_stopping_redis_answers_503_and_everything_recovers(
    crash: tuple[Stack, RedisServer], workers: Workers
) -> None:
    stack, server = crash
    key = stack.key()  # keys live in the database, which survives
    auth = {"Authorization": f"Bearer {key}"}
    workers.start()
    server.stop()
    try:
        start = time.monotonic()
        resp = requests.post(
            f"{stack.url}/v1/chat/completions",
            json=chat_body(),
            headers=auth,
            timeout=10,
        )
        assert resp.status_code == 503 and time.monotonic() - start < 2
        time.sleep(2)  # the worker and its threads see the outage too
    finally:
        server.start()

    def served() -> bool:
        answer = requests.post(
            f"{stack.url}/v1/chat/completions",
            json=chat_body(fake={"tokens": 2}),
            headers=auth,
            timeout=30,
        )
        return answer.status_code == 200

    wait_until(served, 45, "web and worker to recover after Redis came back")
