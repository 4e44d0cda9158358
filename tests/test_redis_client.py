"""The zero-timeout readiness check redis-py runs before every pooled command."""

from __future__ import annotations

import socket

from redis._parsers import hiredis as hiredis_parser

import common.redis_client  # noqa: F401  (installs the check)
from common.redis_client import _zero_timeout_natively


def test_the_installed_check_is_ours() -> None:
    # If a redis-py upgrade renames the function, this says the lever is gone.
    assert "_zero_timeout_natively" in hiredis_parser._socket_can_read.__qualname__


def test_zero_timeout_reports_data_and_a_closed_peer() -> None:
    check = hiredis_parser._socket_can_read
    ours, theirs = socket.socketpair()
    try:
        assert check(ours, 0) is False
        theirs.sendall(b"+OK\r\n")
        assert check(ours, 0) is True
        ours.recv(16)
        assert check(ours, 0) is False
        theirs.close()
        assert check(ours, 0) is True  # EOF reads as ready, as redis-py expects
    finally:
        ours.close()


def test_waits_with_a_timeout_stay_cooperative() -> None:
    calls: list[float] = []

    def cooperative(sock: socket.socket, timeout: float) -> bool:
        calls.append(timeout)
        return True

    check = _zero_timeout_natively(cooperative)
    ours, theirs = socket.socketpair()
    try:
        assert check(ours, 0.5) is True
        assert check(ours, 2.0) is True
        assert check(ours, 0) is False
    finally:
        ours.close()
        theirs.close()
    assert calls == [0.5, 2.0]
