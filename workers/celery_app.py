"""make_celery(): the Celery app and all its configuration, derived from Settings."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from celery import Celery
from kombu import Queue

from common.config import Settings, load_settings
from common.queues import QUEUE_BULK, QUEUE_INTERACTIVE, TASK_RUN_JOB
from workers.broker.transport import Transport

#: Seconds a producer waits for the broker before the request answers 503.
BROKER_CONNECT_TIMEOUT_SECONDS = 1.0
#: Read timeout of broker sockets; longer than kombu's 1 s BRPOP poll.
BROKER_SOCKET_TIMEOUT_SECONDS = 3.0
#: Broker connections a web process keeps for publishing.
BROKER_POOL_LIMIT = 50
#: Redis connections kombu's transport may open per process (its default of 10
#: starves hundreds of greenlets acknowledging tasks at once).
BROKER_REDIS_CONNECTIONS = 100


class LlmqCelery(Celery):
    """A Celery app that carries the llmq Settings it was built from."""

    llmq_settings: Settings

    @cached_property
    def backend(self) -> Any:
        """The (disabled) result backend, built once.

        Celery keeps a backend that is not thread-safe per thread, which under
        gevent means one new backend object per task greenlet (5 % of a worker's
        CPU); the disabled backend holds no state, so one serves them all.
        """
        return self._get_backend()


def make_celery(settings: Settings | None = None) -> LlmqCelery:
    """Build the Celery app; the web uses it only to publish tasks by name."""
    settings = settings or load_settings()
    app = LlmqCelery("llmq", include=["workers.tasks"])
    app.llmq_settings = settings
    app.conf.update(
        broker_url=settings.redis_url,
        broker_transport=f"{Transport.__module__}:{Transport.__name__}",
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=BROKER_CONNECT_TIMEOUT_SECONDS,
        broker_pool_limit=BROKER_POOL_LIMIT,
        broker_transport_options={
            # Tasks not started this long after their submit are delivered
            # again (workers/broker/transport.py); it outlasts any job.
            "visibility_timeout": settings.visibility_timeout_seconds,
            "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_SECONDS,
            "socket_timeout": BROKER_SOCKET_TIMEOUT_SECONDS,
            "max_connections": BROKER_REDIS_CONNECTIONS,
        },
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # Job records in Redis are the source of truth, not Celery results.
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        task_queues=[Queue(QUEUE_INTERACTIVE), Queue(QUEUE_BULK)],
        task_default_queue=QUEUE_INTERACTIVE,
        task_routes={TASK_RUN_JOB: {"queue": QUEUE_INTERACTIVE}},
        task_publish_retry=False,
        # Task events cost ~10 % of a worker's CPU; Flower turns them on itself.
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app
