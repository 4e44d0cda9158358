"""Redis clients tuned so that a dead Redis fails fast instead of hanging."""

from __future__ import annotations

import socket

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

#: Connections one process keeps to Redis for short commands; callers beyond
#: that wait for a free one (commands take well under a millisecond).
POOL_CONNECTIONS = 128
#: Longest a caller waits for a free pooled connection when all are busy.
POOL_WAIT_SECONDS = 5.0
#: TCP keepalive (idle seconds, probe interval, probes): a connection to a Redis
#: that vanished without closing it fails within about a minute, even one that
#: only waits for pub/sub messages. Options the OS lacks keep its defaults.
KEEPALIVE = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}


def connect(url: str, timeout_seconds: float) -> redis.Redis:
    """A client for short commands: connect and read within ``timeout_seconds``.

    Its pool is bounded: however many streams a process serves, it holds at
    most ``POOL_CONNECTIONS`` connections, waiting up to the timeout for one.
    """
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_CONNECTIONS,
        timeout=POOL_WAIT_SECONDS,
        socket_connect_timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
        socket_keepalive=True,
        socket_keepalive_options=KEEPALIVE,
    )
    return redis.Redis(connection_pool=pool)
