"""The Celery app's per-task overheads stay off: one backend, one client, quiet INFO."""

from __future__ import annotations

import logging
import threading

import gevent

from common.config import load_settings
from tests.conftest import ROOT, RedisServer
from workers import tasks  # noqa: F401  (sets the task log levels)
from workers.broker.transport import Channel
from workers.celery_app import make_celery


def _app(redis_server: RedisServer):  # type: ignore[no-untyped-def]
    return make_celery(
        load_settings(
            {"REDIS_URL": redis_server.url, "LLMQ_CATALOG": str(ROOT / "catalog.yaml")}
        )
    )


def test_every_greenlet_and_thread_shares_one_result_backend(
    redis_server: RedisServer,
) -> None:
    app = _app(redis_server)
    seen = [gevent.spawn(lambda: app.backend).get() for _ in range(3)]
    thread = threading.Thread(target=lambda: seen.append(app.backend))
    thread.start()
    thread.join()
    assert all(backend is app.backend for backend in seen)


def test_a_broker_channel_reuses_one_redis_client(redis_server: RedisServer) -> None:
    app = _app(redis_server)
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        assert isinstance(channel, Channel)
        assert channel._create_client() is channel._create_client()
        # The client really talks to the broker: the unacked bookkeeping's path.
        with channel.conn_or_acquire() as client:
            assert client.ping()


def test_per_task_info_lines_are_off_but_failures_still_log() -> None:
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logger = logging.getLogger(name)
        assert not logger.isEnabledFor(logging.INFO)
        assert logger.isEnabledFor(logging.ERROR)
