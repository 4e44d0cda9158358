"""The gunicorn worker the Procfile runs: gevent's own HTTP server, with keep-alive.

gunicorn's ``gevent`` worker parses requests and writes responses in gunicorn's
Python code; its ``gevent_pywsgi`` worker hands connections to ``gevent.pywsgi``,
which costs a web process less CPU per request (bench/RESULTS.md). pywsgi alone
never times out a connection waiting for its next request, so an idle keep-alive
client would hold one of ``--worker-connections`` until it left, and a graceful
stop would wait out ``--graceful-timeout`` for it. ``Worker`` closes a connection
whose next request line and headers take longer than ``--keep-alive`` seconds to
arrive, as gunicorn's own worker does, sends a response's status line and
headers in the same system call as its first body bytes, sends each write with
one ``send`` when the socket takes it whole, and builds no access record when no
access log is kept.
"""

from __future__ import annotations

from typing import Any

from gunicorn.workers.ggevent import (  # type: ignore[import-untyped]
    GeventPyWSGIWorker,
    PyWSGIHandler,
)


class KeepAliveHandler(PyWSGIHandler):
    """pywsgi's handler with gunicorn's keep-alive limit on reading a request."""

    #: Set from gunicorn's ``--keep-alive`` when the worker starts (0: no limit).
    keepalive_seconds: float = 0.0
    #: Writes held back to leave together (see ``_write_with_headers``).
    _held: bytearray | None = None

    def read_requestline(self) -> str:
        self.socket.settimeout(self.keepalive_seconds or None)
        line: str = super().read_requestline()
        return line

    def read_request(self, raw_requestline: str) -> Any:
        try:
            return super().read_request(raw_requestline)
        finally:
            self.socket.settimeout(None)

    def log_request(self) -> None:
        """gunicorn's access record, built only when an access log keeps it.

        gunicorn's handler builds the record (times, headers, a response object)
        before its logger finds the access log off (its cost: bench/RESULTS.md).
        """
        if getattr(self.server.log, "access_log_enabled", True):
            super().log_request()

    def _sendall(self, data: bytes | bytearray) -> None:
        """One ``send``; pywsgi's ``sendall`` only for what the socket left.

        gevent's ``sendall`` asks the OS for the socket's send buffer size on
        every call (a system call) and loops in Python; an SSE event or a small
        answer nearly always fits the buffer, so a streamed token costs one
        system call. A failed send leaves the whole write to pywsgi, which
        meets the same error and records it as it always does.
        """
        if self._held is not None:
            self._held += data
            return
        try:
            sent = self.socket.send(data)
        except OSError:
            sent = 0
        self.response_length += sent
        if sent < len(data):
            super()._sendall(memoryview(data)[sent:])

    def _write_with_headers(self, data: bytes) -> None:
        """pywsgi sends the headers, then the first body bytes: one send here.

        A whole non-streamed answer, or a stream's headers with its first chunk,
        leaves in one system call and one TCP segment.
        """
        self._held = bytearray()  # what pywsgi sends meanwhile is held
        try:
            super()._write_with_headers(data)
        finally:
            held, self._held = self._held, None
        self._sendall(held)


class Worker(GeventPyWSGIWorker):
    """``--worker-class web.server.Worker``."""

    wsgi_handler = KeepAliveHandler

    def init_process(self) -> None:
        KeepAliveHandler.keepalive_seconds = float(self.cfg.keepalive)
        super().init_process()
