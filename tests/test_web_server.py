"""The web's gunicorn worker (web.server): keep-alive, and idle connections let go.

gunicorn's keep-alive limit is its default, 2 seconds: a connection that sends no
request for that long is closed, and a stopping web does not wait for it.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.conftest import (
    RedisServer,
    Stack,
    base_env,
    start_web,
    stop_process,
)

KEEPALIVE_SECONDS = 2.0
#: How long a stop may take with an idle client connected (gunicorn's graceful
#: timeout, which an idle connection used to use up, is 30 s).
STOP_WITHIN_SECONDS = 10.0
_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: llmq\r\n\r\n"


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def _answer(sock: socket.socket) -> bytes:
    """One response to ``_REQUEST`` (its body is small and length-delimited)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head


def _seconds_until_closed(sock: socket.socket) -> float:
    start = time.monotonic()
    assert sock.recv(4096) == b"", "the server sent something unasked"
    return time.monotonic() - start


def test_a_connection_serves_several_requests_then_closes_when_idle(
    stack: Stack,
) -> None:
    with _connect(stack.url) as sock:
        for _ in range(3):
            sock.sendall(_REQUEST)
            assert _answer(sock).startswith(b"HTTP/1.1 200")
        waited = _seconds_until_closed(sock)
    assert KEEPALIVE_SECONDS - 0.5 <= waited <= KEEPALIVE_SECONDS + 3


def test_a_connection_that_never_sends_a_request_is_closed(stack: Stack) -> None:
    with _connect(stack.url) as sock:
        waited = _seconds_until_closed(sock)
    assert KEEPALIVE_SECONDS - 0.5 <= waited <= KEEPALIVE_SECONDS + 3


def test_a_stop_does_not_wait_for_an_idle_keep_alive_client(
    redis_server: RedisServer,
    catalog_path: Path,
    logdir: Path,
    tmp_path: Path,
) -> None:
    env = base_env(redis_server.url, catalog_path, f"sqlite:///{tmp_path / 'k.db'}")
    url, web = start_web(env, logdir, "keepalive-web")
    try:
        with _connect(url) as sock:
            sock.sendall(_REQUEST)
            assert _answer(sock).startswith(b"HTTP/1.1 200")
            start = time.monotonic()
            web.terminate()
            web.wait(STOP_WITHIN_SECONDS)  # raises TimeoutExpired if it waits on
            assert time.monotonic() - start < STOP_WITHIN_SECONDS
    finally:
        stop_process(web)
