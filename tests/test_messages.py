"""The task message the web stores with a job is the one Celery's send_task sends."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis

from common.config import load_settings
from common.queues import TASK_RUN_JOB
from tests.conftest import ROOT, RedisServer
from workers.broker.messages import TaskMessages
from workers.broker.transport import UNACKED_AT_SUBMIT
from workers.celery_app import make_celery

#: Fields that differ between any two sends of the same task.
_PER_SEND = {
    ("headers", "id"),
    ("headers", "root_id"),
    ("properties", "correlation_id"),
    ("properties", "delivery_tag"),
}


def _comparable(payload: str | bytes) -> dict[str, Any]:
    message = json.loads(payload)
    # The body's value, not its spacing.
    message["body"] = json.loads(base64.b64decode(message["body"]))
    for section, name in _PER_SEND:
        message[section][name] = "*"
    message["properties"].pop(UNACKED_AT_SUBMIT, None)
    return message


def test_a_built_message_matches_what_send_task_pushes(
    redis_server: RedisServer,
) -> None:
    settings = load_settings(
        {"REDIS_URL": redis_server.url, "LLMQ_CATALOG": str(ROOT / "catalog.yaml")}
    )
    app = make_celery(settings)
    client = redis.Redis.from_url(redis_server.url)
    messages = TaskMessages(app)
    # Queues no worker of the test stack consumes, so the sent message stays put.
    for queue in ("test-messages-interactive", "test-messages-bulk"):
        for job_id in ("job_abc", "job_0123456789abcdef"):
            client.delete(queue)
            app.send_task(TASK_RUN_JOB, args=[job_id], queue=queue)
            [sent] = client.lrange(queue, 0, -1)
            task = messages.run_job(job_id, queue)
            assert task.queue == queue
            assert _comparable(task.payload) == _comparable(sent)
            # The entry kombu's QoS.append would write on delivery.
            message, exchange, routing_key = json.loads(task.unacked_value)
            assert message == json.loads(task.payload)
            assert (exchange, routing_key) == ("", queue)
            assert message["properties"][UNACKED_AT_SUBMIT] is True
            assert task.unacked == (
                "unacked",
                "unacked_index",
                message["properties"]["delivery_tag"],
            )
            client.delete(queue)


def test_every_message_has_its_own_task_and_delivery_ids(
    redis_server: RedisServer,
) -> None:
    settings = load_settings(
        {"REDIS_URL": redis_server.url, "LLMQ_CATALOG": str(ROOT / "catalog.yaml")}
    )
    messages = TaskMessages(make_celery(settings))
    first, second = (
        json.loads(messages.run_job("job_abc", "interactive").payload) for _ in range(2)
    )
    for section, name in _PER_SEND:
        assert first[section][name] != second[section][name]
    assert first["headers"]["id"] == first["properties"]["correlation_id"]
