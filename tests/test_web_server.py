"""The web's gunicorn worker (web.server): keep-alive, and idle connections let go.

gunicorn's keep-alive limit is its default, 2 seconds: a connection that sends no
request for that long is closed, and a stopping web does not wait for it. A
response's head leaves with its first body bytes, in one send, and each write is
one ``send`` unless the socket's buffer cannot take it whole.
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

#: A socket call the handler made: ``send`` or ``sendall``, and its bytes.
Call = tuple[str, bytes]

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


class _SocketCalls:
    """A handler's socket, noting each send made on it and what it carried."""

    def __init__(self, sock: gevent.socket.socket, calls: list[Call]) -> None:
        self._sock, self._calls = sock, calls

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._sock, name)
        if name not in ("send", "sendall"):
            return attr

        def noted(data: bytes, *args: Any) -> Any:
            self._calls.append((name, bytes(data)))
            return attr(data, *args)

        return noted


class _Recording(KeepAliveHandler):
    """The web's handler on a socket that notes its sends."""

    calls: list[Call] = []

    def handle(self) -> None:
        self.socket = _SocketCalls(self.socket, self.calls)
        super().handle()


#: An answer larger than loopback's socket buffers take at once.
_BIG = b"x" * (16 << 20) + b"END"


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    if environ["PATH_INFO"] == "/stream":  # no length: chunked, piece by piece
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return iter([b"data: 1\n\n", b"data: 2\n\n"])
    if environ["PATH_INFO"] == "/big":
        start_response("200 OK", [("Content-Length", str(len(_BIG)))])
        return [_BIG]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def _exchange(
    path: str, ending: bytes, log: _AccessLog | None = None
) -> tuple[list[Call], bytes]:
    """The socket sends the handler made for one request, and what the client read."""
    _Recording.calls.clear()
    server = WSGIServer(("127.0.0.1", 0), _app, handler_class=_Recording)
    server.log = log or _AccessLog(enabled=False)
    server.start()
    try:
        client = gevent.socket.create_connection(server.address, timeout=10)
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: llmq\r\n\r\n".encode())
        gevent.sleep(0.2)  # a client slow to read: the server's sends fill the buffers
        received = b""
        while not received.endswith(ending):
            received += client.recv(4096)
        client.close()
    finally:
        server.stop()
    return list(_Recording.calls), received


def test_a_whole_answer_leaves_in_one_send() -> None:
    calls, received = _exchange("/plain", b"hello")
    assert calls == [("send", received)]
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 5\r\n" in received


def test_a_streams_head_leaves_with_its_first_chunk() -> None:
    calls, received = _exchange("/stream", b"0\r\n\r\n")
    head, _, body = calls[0][1].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"9\r\ndata: 1\n\n\r\n"  # the first chunk, framed
    assert [data for _, data in calls[1:]] == [b"9\r\ndata: 2\n\n\r\n", b"0\r\n\r\n"]
    assert b"".join(data for _, data in calls) == received


def test_each_write_of_a_stream_is_one_send() -> None:
    calls, _ = _exchange("/stream", b"0\r\n\r\n")
    # gevent's sendall asks the OS for the buffer size on every call: never used.
    assert [name for name, _ in calls] == ["send"] * 3


def test_an_answer_larger_than_the_socket_buffers_arrives_whole() -> None:
    calls, received = _exchange("/big", b"END")
    assert received.endswith(b"\r\n\r\n" + _BIG)
    # One send took what the buffers held; sendall sent the rest.
    assert [name for name, _ in calls] == ["send", "sendall"]
    (_, whole), (_, rest) = calls
    assert whole.endswith(rest) and len(rest) < len(whole)


def test_an_access_record_is_built_only_when_an_access_log_keeps_it() -> None:
    for enabled, records in ((False, 0), (True, 1)):
        log = _AccessLog(enabled)
        _exchange("/plain", b"hello", log)
        assert log.records == records, enabled
