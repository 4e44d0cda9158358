"""The upstream HTTP client: geventhttpclient, through parts of it that are not
public (tests/test_patched_internals.py guards them).

Its C parser and gevent-native sockets take far less CPU per call than urllib3
and http.client did (bench/RESULTS.md), and a request's head and
body leave in one write. What is reached past its public API: the client's pool
gets a subclass (a connection handed out under the client's read timeout, since
a reused one kept its last stream's idle timeout; an idle one checked on the OS's
``poll``), and a streamed body is read one socket read per arrival from the
response's parser buffer (its public ``read`` waits for a length, ``readline``
for a line). TLS trusts the OS's authorities and environment proxies apply.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import gevent.socket
import gevent.ssl
from geventhttpclient import HTTPClient
from geventhttpclient.connectionpool import ConnectionPool, SSLConnectionPool
from geventhttpclient.response import HTTPConnectionClosed, HTTPSocketPoolResponse
from requests.utils import get_environ_proxies

from common.catalog import Timeouts
from common.redis.socket_check import readable_now

#: Connections one process may have open to one provider at once (callers beyond
#: it wait for one); the worker's concurrency bounds it long before.
POOL_SIZE = 10_000
#: Most bytes taken from an upstream socket by one read.
READ_BYTES = 65536


class _Pool(ConnectionPool):
    """geventhttpclient's pool, with a connection handed out under the client's
    read timeout (a reused one would keep its last stream's idle timeout), and its
    check that an idle connection is still open on the OS's ``poll``
    (``common.redis.socket_check``)."""

    def get_socket(self) -> gevent.socket.socket:
        sock = super().get_socket()
        sock.settimeout(self.network_timeout)
        return sock

    def _is_socket_alive(self, sock: gevent.socket.socket | None) -> bool:
        return sock is not None and sock.fileno() >= 0 and not readable_now(sock)


class _SSLPool(_Pool, SSLConnectionPool):
    """``_Pool`` for HTTPS providers."""


def _system_trust(**_: Any) -> gevent.ssl.SSLContext:
    """The OS's certificate authorities, as urllib3 and requests use them
    (geventhttpclient's default trusts certifi's bundle alone)."""
    return gevent.ssl.create_default_context()


def client(base_url: str, timeouts: Timeouts) -> HTTPClient:
    """A client for the provider's host under ``timeouts`` (connect, first token),
    through the environment's proxy if one applies."""
    url = urlsplit(base_url)
    proxy = get_environ_proxies(base_url).get(url.scheme)
    via = urlsplit(proxy) if proxy else None
    client = HTTPClient(
        url.hostname or "",
        url.port,
        ssl=url.scheme == "https",
        ssl_context_factory=_system_trust,
        concurrency=POOL_SIZE,
        connection_timeout=timeouts.connect,
        network_timeout=timeouts.first_token,
        block_size=READ_BYTES,
        proxy_host=via.hostname if via else None,
        proxy_port=(via.port or 80) if via else None,
        proxy_user=unquote(via.username) if via and via.username else None,
        proxy_password=unquote(via.password) if via and via.password else None,
    )
    # HTTPClient builds its pool itself; ours only adds behaviour to its class.
    pool = client._connection_pool
    pool.__class__ = _SSLPool if isinstance(pool, SSLConnectionPool) else _Pool
    return client


def arrivals(resp: HTTPSocketPoolResponse) -> Iterator[bytes]:
    """The body in the pieces it arrives in: one socket read each.

    The response's parser de-chunks what each read brings; a piece is whatever
    body that read completed (geventhttpclient's ``read`` would wait for a given
    length, its ``readline`` for a line). A body that ends when the provider
    closes the connection ends with it; any other that ends early is a cut.
    """
    while True:
        if resp._body_buffer:
            piece = bytes(resp._body_buffer)
            del resp._body_buffer[:]
            yield piece
        if resp.message_complete:
            return
        sock = resp._sock
        if sock is None:
            raise HTTPConnectionClosed("the connection was closed")
        data = sock.recv(READ_BYTES)
        resp.feed(data)
        if not data and not resp.message_complete:
            raise HTTPConnectionClosed("the body ended early")


def close_under_read(resp: HTTPSocketPoolResponse) -> None:
    """Close the response's connection under a read blocked on it (a cancel)."""
    sock = resp._sock
    if sock is not None:
        sock.close()


def set_read_timeout(resp: HTTPSocketPoolResponse, seconds: float) -> None:
    """From now on a silence longer than ``seconds`` on ``resp`` is a timeout."""
    if resp._sock is not None:
        resp._sock.settimeout(seconds)
