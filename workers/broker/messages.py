"""Celery task messages as the Redis transport stores them, built without sending.

The web stores a job and the task that runs it in one Redis script, so neither
exists without the other and a submit costs one round trip instead of two
(kombu's publish path was a large share of the web's CPU per request). The
message is built by Celery (``as_task_v2``) and kombu (``prepare_message``,
``basic_publish``) as ``send_task`` builds it; only the final ``LPUSH`` is
handed back instead of sent. Building it that way is dear in a busy web process
(bench/RESULTS.md), so it is built once per queue, for a placeholder job, and
each job fills in only what differs between two sends: its job id and fresh task
and delivery ids. tests/test_messages.py compares the result with what
``send_task`` stores, so a Celery or kombu upgrade that changes the format fails
there first.

Each message also comes with the entry kombu's Redis QoS would write into its
unacked set on delivery, so the submit writes it instead (see
workers/broker/transport.py), and with a property saying so.
"""

from __future__ import annotations

import base64
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError as BrokerError
from kombu.serialization import dumps
from kombu.transport.virtual import Channel

from common import jsoncodec
from common.errors import UnavailableError
from common.jobs.model import Unacked
from common.queues import TASK_RUN_JOB
from workers.broker.transport import UNACKED_AT_SUBMIT, unacked_keys

#: kombu's code for a message that survives a broker restart (Celery's default).
PERSISTENT_DELIVERY_MODE = 2
#: The job id a queue's template message is built for.
_PLACEHOLDER_JOB = "job_template"


@dataclass(frozen=True)
class TaskMessage:
    """The Celery task that runs a job, as the Redis broker keeps it.

    ``payload`` is pushed on the list ``queue``; ``unacked_value`` is what kombu
    stores under the message's delivery tag in its unacked set (``unacked``)
    until the message is acknowledged, and what it pushes back if that never
    happens within the visibility timeout.
    """

    queue: str
    payload: str
    unacked: Unacked
    unacked_value: str

    def push_parts(self, at: float) -> tuple[list[str], list[Any]]:
        """lua/lib.lua's ``push_task`` keys and arguments: the list, the unacked
        hash and its index; the message, its tag, its entry, the entry's time."""
        hash_key, index_key, tag = self.unacked
        return [self.queue, hash_key, index_key], [
            self.payload,
            tag,
            self.unacked_value,
            at,
        ]


class _Capture:
    """Stands in for kombu's publish batch: records the command instead of sending."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def add(self, name: str, *args: Any) -> None:
        self.commands.append((name, args))


@dataclass(frozen=True)
class _Template:
    """A queue's message for the placeholder job, split where jobs differ."""

    key: str
    message: dict[str, Any]
    body: list[Any]
    #: What follows the message in its unacked entry: ``,<exchange>,<routing key>]``.
    entry_tail: str


class TaskMessages:
    """Builds ``run_job`` task messages for one process (one kombu channel, reused)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._channel: Channel | None = None
        self._templates: dict[str, _Template] = {}
        self._lock = threading.Lock()
        self._unacked_keys = unacked_keys(app.conf.broker_transport_options)

    def run_job(self, job_id: str, queue: str) -> TaskMessage:
        """The payload ``send_task`` would ``LPUSH`` for this job, and its entry."""
        template = self._template(queue)
        task_id = str(uuid.uuid4())
        tag = str(uuid.uuid4())
        message = template.message
        body = jsoncodec.dumps_bytes([[job_id], *template.body[1:]])
        payload = {
            **message,
            "body": base64.b64encode(body).decode(),
            "headers": {
                **message["headers"],
                "id": task_id,
                "root_id": task_id,
                "argsrepr": repr([job_id]),
            },
            "properties": {
                **message["properties"],
                "correlation_id": task_id,
                "delivery_tag": tag,
                UNACKED_AT_SUBMIT: True,
            },
        }
        text = jsoncodec.dumps(payload)
        unacked = (*self._unacked_keys, tag)
        return TaskMessage(template.key, text, unacked, f"[{text}{template.entry_tail}")

    def _template(self, queue: str) -> _Template:
        template = self._templates.get(queue)
        if template is None:
            key, payload = self._build(_PLACEHOLDER_JOB, queue)
            message = jsoncodec.loads(payload)
            if message["properties"].get("body_encoding") != "base64":
                raise RuntimeError("kombu no longer base64-encodes task bodies")
            body = jsoncodec.loads(base64.b64decode(message["body"]))
            if body[0] != [_PLACEHOLDER_JOB]:
                raise RuntimeError("Celery moved a task's arguments in its message")
            delivery = message["properties"]["delivery_info"]
            exchange, routing_key = (
                jsoncodec.dumps(delivery[name]) for name in ("exchange", "routing_key")
            )
            template = self._templates[queue] = _Template(
                key, message, body, f",{exchange},{routing_key}]"
            )
        return template

    def _build(self, job_id: str, queue: str) -> tuple[str, str]:
        """The message as Celery and kombu build it, captured instead of sent."""
        task = self.app.amqp.as_task_v2(
            str(uuid.uuid4()),
            TASK_RUN_JOB,
            args=[job_id],
            kwargs={},
            reply_to=self.app.thread_oid,
            ignore_result=None,
        )
        content_type, content_encoding, body = dumps(
            task.body, serializer=self.app.conf.task_serializer
        )
        channel = self._channel_for_encoding()
        message = channel.prepare_message(
            body,
            0,
            content_type,
            content_encoding,
            task.headers,
            {**task.properties, "delivery_mode": PERSISTENT_DELIVERY_MODE},
        )
        capture = _Capture()
        channel.basic_publish(message, "", queue, _publish_batch=capture)
        [(command, (key, payload))] = capture.commands
        if command != "lpush":
            raise RuntimeError(f"kombu wanted {command!r} to enqueue a task")
        return key, payload

    def _channel_for_encoding(self) -> Channel:
        """A channel made once (one attempt to reach Redis); building sends nothing."""
        with self._lock:
            if self._channel is None:
                connection = self.app.connection_for_write()
                try:
                    connection.connect()
                    self._channel = connection.channel()
                except (BrokerError, redis.RedisError, OSError) as exc:
                    connection.release()
                    raise UnavailableError("the job queue is unavailable") from exc
            return self._channel
