"""A stack with no worker (jobs stay queued) and a Redis that the tests stop."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from tests.conftest import (
    RedisServer,
    Stack,
    chat_body,
    sse_events,
    web_on_own_redis,
)

#: A configured job TTL, to see that the setting reaches Redis.
IDLE_TTL_SECONDS = 3600


@pytest.fixture(scope="module")
def idle(
    catalog_path: Path, logdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, RedisServer]]:
    """Web on its own Redis with no worker, so nothing leaves the queue."""
    with web_on_own_redis(
        "idle",
        catalog_path,
        logdir,
        tmp_path_factory,
        LLMQ_JOB_TTL_SECONDS=str(IDLE_TTL_SECONDS),
    ) as stack:
        yield stack


def test_queued_jobs_report_their_queue_position(
    idle: tuple[Stack, RedisServer],
) -> None:
    stack, _ = idle
    auth = {"Authorization": f"Bearer {stack.key()}"}
    jobs = [
        requests.post(
            f"{stack.url}/v1/jobs", json=chat_body(), headers=auth, timeout=10
        ).json()
        for _ in range(3)
    ]
    assert all(j["status"] == "queued" for j in jobs)
    ttl = redis.Redis.from_url(stack.redis_url).ttl(f"llmq:job:{jobs[0]['id']}")
    assert IDLE_TTL_SECONDS - 60 < ttl <= IDLE_TTL_SECONDS
    positions = [
        requests.get(f"{stack.url}/v1/jobs/{j['id']}", headers=auth, timeout=10).json()[
            "queue_position"
        ]
        for j in jobs
    ]
    assert positions == sorted(positions) and len(set(positions)) == 3
    bulk = requests.post(
        f"{stack.url}/v1/jobs",
        json=chat_body(priority="bulk"),
        headers=auth,
        timeout=10,
    ).json()
    assert bulk["priority"] == "bulk" and bulk["queue_position"] == 1


def test_a_cancelled_queued_job_ends_at_once_and_never_starts(
    idle: tuple[Stack, RedisServer],
) -> None:
    stack, _ = idle
    auth = {"Authorization": f"Bearer {stack.key()}"}
    first, second = (
        requests.post(
            f"{stack.url}/v1/jobs", json=chat_body(), headers=auth, timeout=10
        ).json()
        for _ in range(2)
    )
    before = requests.get(
        f"{stack.url}/v1/jobs/{second['id']}", headers=auth, timeout=10
    ).json()["queue_position"]
    resp = requests.post(
        f"{stack.url}/v1/jobs/{first['id']}/cancel", headers=auth, timeout=10
    )
    assert resp.status_code == 200
    cancelled = resp.json()
    assert cancelled["status"] == "cancelled" and cancelled["started_at"] is None
    assert cancelled["finished_at"] is not None and cancelled["usage"] is None
    after = requests.get(
        f"{stack.url}/v1/jobs/{second['id']}", headers=auth, timeout=10
    ).json()["queue_position"]
    assert after == before - 1
    with requests.get(
        f"{stack.url}/v1/jobs/{first['id']}/events",
        headers=auth,
        stream=True,
        timeout=10,
    ) as events:
        seen = [
            (e["event"], json.loads(e["data"]))
            for e in sse_events(events)
            if "event" in e
        ]
    assert [name for name, _ in seen] == ["status", "status", "done"]
    assert seen[1][1] == {"status": "cancelled"} and seen[2][1]["status"] == "cancelled"


def test_a_dead_redis_answers_503_within_two_seconds_and_recovers(
    idle: tuple[Stack, RedisServer],
) -> None:
    stack, server = idle
    key = stack.key()
    auth = {"Authorization": f"Bearer {key}"}
    job = requests.post(
        f"{stack.url}/v1/jobs", json=chat_body(), headers=auth, timeout=10
    ).json()
    server.stop()
    try:
        calls = [
            ("POST", "/v1/chat/completions", chat_body()),
            ("POST", "/v1/chat/completions", chat_body(stream=True)),
            ("POST", "/v1/jobs", chat_body()),
            ("GET", f"/v1/jobs/{job['id']}", None),
            ("GET", f"/v1/jobs/{job['id']}/events", None),
            ("GET", "/v1/jobs", None),
            ("POST", "/api/llm/chat", chat_body()),
        ]
        for method, path, body in calls:
            start = time.monotonic()
            resp = requests.request(
                method, f"{stack.url}{path}", json=body, headers=auth, timeout=10
            )
            assert time.monotonic() - start < 2, path
            assert resp.status_code == 503, (path, resp.text)
            payload = resp.json()
            code = (
                payload["code"]
                if path.startswith("/api/")
                else payload["error"]["code"]
            )
            assert code in (503, "unavailable"), path
    finally:
        server.start()
    again = requests.post(
        f"{stack.url}/v1/jobs", json=chat_body(), headers=auth, timeout=10
    )
    assert again.status_code == 202
