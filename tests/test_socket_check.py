"""Zero-timeout readiness checks answered by the OS's poll (redis-py's, and
``readable_now`` itself, which the upstream client's pool uses)."""

from __future__ import annotations

import socket
from typing import Any

from redis._parsers import hiredis as hiredis_parser

from common.redis import socket_check


def test_redis_pys_check_is_replaced_once() -> None:
    socket_check.install()
    socket_check.install()
    check = hiredis_parser._socket_can_read
    # If an upgrade renames the function, this says the lever is gone.
    assert check.__qualname__.startswith("zero_timeout_natively")
    assert not hasattr(check.__wrapped__, "__wrapped__"), "wrapped twice"


def test_zero_timeout_reports_data_and_a_closed_peer() -> None:
    socket_check.install()
    for check in (
        hiredis_parser._socket_can_read,
        lambda sock, _: socket_check.readable_now(sock),
    ):
        ours, theirs = socket.socketpair()
        try:
            assert check(ours, 0) is False
            theirs.sendall(b"+OK\r\n")
            assert check(ours, 0) is True
            ours.recv(16)
            assert check(ours, 0.0) is False
            theirs.close()
            assert check(ours, 0) is True  # EOF reads as ready, as both expect
        finally:
            ours.close()


def test_waits_with_a_timeout_stay_with_the_original() -> None:
    calls: list[Any] = []

    def cooperative(sock: socket.socket, timeout: Any) -> bool:
        calls.append(timeout)
        return True

    check = socket_check.zero_timeout_natively(cooperative)
    ours, theirs = socket.socketpair()
    try:
        assert check(ours, 0.5) is True
        assert check(ours, None) is True
        assert check(ours, 0) is False
    finally:
        ours.close()
        theirs.close()
    assert calls == [0.5, None]
