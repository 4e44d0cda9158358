"""Zero-timeout socket readiness checks on the OS's ``poll``, not gevent's.

redis-py checks a pooled connection for stray data before every command, and the
upstream client an idle connection for a closed peer before every request
(``common.providers.http_client``), each with a zero-timeout poll. Under
gevent's monkey-patching that is the cooperative ``poll``, which builds watchers
and a timer even for a zero timeout, a share of a busy process's CPU worth a few
percent of capacity (bench/RESULTS.md). A zero-timeout poll cannot block, so it
needs no cooperation; waits with a timeout still go through the cooperative
originals."""

from __future__ import annotations

import logging
import select
import socket
from collections.abc import Callable
from typing import Any

from gevent.monkey import get_original
from redis._parsers import hiredis as hiredis_parser

log = logging.getLogger(__name__)

_native_poll = get_original("select", "poll")

_Check = Callable[[socket.socket, Any], bool]


def readable_now(sock: socket.socket) -> bool:
    """Whether ``sock`` has data (or EOF) to read, without waiting."""
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True  # TLS bytes decrypted above the socket
    poller = _native_poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def zero_timeout_natively(cooperative: _Check) -> _Check:
    """``cooperative(sock, timeout)`` with its zero-timeout case answered natively."""

    def check(sock: socket.socket, timeout: Any = None) -> bool:
        if timeout == 0:
            return readable_now(sock)
        return cooperative(sock, timeout)

    check.__wrapped__ = cooperative  # type: ignore[attr-defined]
    return check


def install() -> None:
    """Answer redis-py's zero-timeout checks natively (idempotent).

    Its function is replaced only where it is found: after an upgrade that
    renames it, redis-py keeps its own (cooperative, slower, still correct), this
    logs a warning, and tests/test_patched_internals.py fails.
    """
    current = getattr(hiredis_parser, "_socket_can_read", None)  # redis-py 8
    if current is None:
        log.warning(
            "redis-py has no _socket_can_read to replace: its zero-timeout checks"
            " stay cooperative (common/redis/socket_check.py must be re-checked)"
        )
    elif not hasattr(current, "__wrapped__"):
        hiredis_parser._socket_can_read = zero_timeout_natively(current)  # type: ignore[assignment]
