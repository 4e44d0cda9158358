"""The web's gunicorn worker (web.server): keep-alive, and idle connections let go.

gunicorn's keep-alive limit is its default, 2 seconds: a connection that sends no
request for that long is closed, and a stopping web does not wait for it. A
response's head leaves with its first body bytes, in one send.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent.socket
from gevent.pywsgi import WSGIServer

from tests.conftest import (
    RedisServer,
    Stack,
    base_env,
    start_web,
    stop_process,
)
from web.server import KeepAliveHandler

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


class _AccessLog:
    """Stands in for gunicorn's logger: counts the access records it is given."""

    def __init__(self, enabled: bool) -> None:
        self.access_log_enabled = enabled
        self.records = 0

    def access(self, *_: Any) -> None:
        self.records += 1


class _Recording(KeepAliveHandler):
    """The web's handler, noting what each of pywsgi's sends carries."""

    sends: list[bytes] = []

    def _sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))
        super()._sendall(data)


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    if environ["PATH_INFO"] == "/stream":  # no length: chunked, piece by piece
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return iter([b"data: 1\n\n", b"data: 2\n\n"])
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def _exchange(
    path: str, ending: bytes, log: _AccessLog | None = None
) -> tuple[list[bytes], bytes]:
    """The sends the handler made for one request, and what the client read."""
    _Recording.sends = []
    server = WSGIServer(("127.0.0.1", 0), _app, handler_class=_Recording)
    server.log = log or _AccessLog(enabled=False)
    server.start()
    try:
        client = gevent.socket.create_connection(server.address, timeout=10)
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: llmq\r\n\r\n".encode())
        received = b""
        while not received.endswith(ending):
            received += client.recv(4096)
        client.close()
    finally:
        server.stop()
    return _Recording.sends, received


def test_a_whole_answer_leaves_in_one_send() -> None:
    sends, received = _exchange("/plain", b"hello")
    assert len(sends) == 1
    assert sends[0] == received
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 5\r\n" in received


def test_a_streams_head_leaves_with_its_first_chunk() -> None:
    sends, received = _exchange("/stream", b"0\r\n\r\n")
    head, _, body = sends[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"9\r\ndata: 1\n\n\r\n"  # the first chunk, framed
    assert sends[1:] == [b"9\r\ndata: 2\n\n\r\n", b"0\r\n\r\n"]
    assert b"".join(sends) == received


def test_an_access_record_is_built_only_when_an_access_log_keeps_it() -> None:
    for enabled, records in ((False, 0), (True, 1)):
        log = _AccessLog(enabled)
        _exchange("/plain", b"hello", log)
        assert log.records == records, enabled
