"""A batch survives SIGKILL of every worker and of its dispatcher, and a restart
of the web, mid-way (on PostgreSQL): every custom_id answered once, and no line
that had succeeded is sent to the provider again."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import redis
import requests

from common.batches.recovery import REQUEUE_AFTER_SECONDS
from common.redis import keys
from tests.batch_helpers import (
    file_lines,
    jsonl,
    output_route,
    request_line,
    run_batch,
    wait_batch,
)
from tests.conftest import (
    RedisServer,
    Stack,
    base_env,
    start_batches,
    start_retention,
    start_web,
    start_worker,
    stop_process,
    wait_until,
)
from tests.databases import fresh_postgres

#: Short leases, so a killed worker's jobs are run again within seconds.
LEASE_SECONDS = "2"
#: Few requests at once, so the batch is mid-way for long enough to kill it.
WINDOW = "20"


@pytest.fixture
def crash_env(
    catalog_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    server = RedisServer(tmp_path_factory.mktemp("batch-crash-redis"))
    server.start()
    try:
        with fresh_postgres("llmq_batch_crash") as url:
            env = base_env(server.url, catalog_path, url)
            env.update(LLMQ_LEASE_SECONDS=LEASE_SECONDS, LLMQ_BULK_WINDOW=WINDOW)
            yield env
    finally:
        server.stop()


def test_a_batch_survives_killed_workers_dispatcher_and_web(
    crash_env: dict[str, str], logdir: Path, upstream: str
) -> None:
    procs = [start_worker(crash_env, logdir, "bc-worker")]
    url, web = start_web(crash_env, logdir, "bc-web")
    procs += [start_batches(crash_env, logdir, "bc-batches")]
    procs += [start_retention(crash_env, logdir, "bc-retention")]
    stack = Stack(url, crash_env, crash_env["REDIS_URL"])
    key = stack.key()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    run = uuid.uuid4().hex[:8]
    ids = [f"k{i:03d}" for i in range(300)]
    lines = [
        request_line(c, fake={"tag": f"{run}-{c}", "tokens": 3, "delay": 0.1})
        for c in ids
    ]
    batch_id = run_batch(client, jsonl(lines))
    broker = redis.Redis.from_url(crash_env["REDIS_URL"])
    widest = 0

    def sixty_done() -> bool:
        # Meanwhile: never more than the window dispatched and unfinished, nor
        # more task messages than that on the bulk queue.
        nonlocal widest
        running = broker.hlen(keys.batch_running_key(batch_id))
        widest = max(widest, running, broker.llen("bulk"))
        return client.batches.retrieve(batch_id).request_counts.completed >= 60

    wait_until(sixty_done, 30, "60 lines done")
    assert 0 < widest <= int(WINDOW)
    for proc in procs[:2]:  # the worker and the dispatcher
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    succeeded = {line["custom_id"] for line in output_route(url, key, batch_id)}
    assert client.batches.retrieve(batch_id).status == "in_progress"
    stop_process(web)
    url, web = start_web(crash_env, logdir, "bc-web-again")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    procs += [start_worker(crash_env, logdir, "bc-worker-again")]
    procs += [start_batches(crash_env, logdir, "bc-batches-again")]
    try:
        done = wait_batch(client, batch_id, timeout=90)
        assert done.status == "completed"
        assert done.request_counts.model_dump() == {
            "total": 300,
            "completed": 300,
            "failed": 0,
        }
        out = file_lines(client, done.output_file_id)
        assert [line["custom_id"] for line in out] == ids
        assert done.error_file_id is None
        calls = {
            c: len(
                requests.get(f"{upstream}/_stats/{run}-{c}", timeout=5).json()["times"]
            )
            for c in ids
        }
        assert all(calls[c] == 1 for c in succeeded), "a finished line ran again"
        assert all(n >= 1 for n in calls.values())
    finally:
        for proc in [web, *procs]:
            if proc.poll() is None:
                stop_process(proc)


def test_a_request_whose_task_message_was_lost_is_sent_again(
    crash_env: dict[str, str], logdir: Path
) -> None:
    """A worker killed between taking a task message and starting its job leaves
    the job queued with no message (the broker redelivers it hours later): the
    dispatcher pushes its task again after REQUEUE_AFTER_SECONDS."""
    url, web = start_web(crash_env, logdir, "lost-web")
    procs = [web, start_batches(crash_env, logdir, "lost-batches")]
    try:
        client = openai.OpenAI(
            base_url=f"{url}/v1",
            api_key=Stack(url, crash_env, crash_env["REDIS_URL"]).key(),
            max_retries=0,
        )
        batch_id = run_batch(client, jsonl([request_line(f"l{i}") for i in range(5)]))
        broker = redis.Redis.from_url(crash_env["REDIS_URL"])
        wait_until(
            lambda: broker.hlen(keys.batch_running_key(batch_id)) == 5,
            20,
            "the requests dispatched",
        )
        assert broker.delete("bulk") == 1  # every task message lost
        procs.append(start_worker(crash_env, logdir, "lost-worker"))
        done = wait_batch(client, batch_id, timeout=REQUEUE_AFTER_SECONDS + 30)
        assert done.request_counts.completed == 5
        assert "pushed again" in (logdir / "lost-batches.log").read_text()
    finally:
        for proc in procs:
            stop_process(proc)
