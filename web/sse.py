"""Writing Server-Sent Events and the HTTP response that carries them."""

from __future__ import annotations

from collections.abc import Iterable

from flask import Response

from common.jobs.events import Event

KEEPALIVE = b": keepalive\n\n"
DONE = b"data: [DONE]\n\n"

_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx and friends must not buffer the stream
}


def job_event(event: Event) -> bytes:
    """A job event as SSE, its stored JSON relayed without re-encoding."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        event.id,
        event.type.encode(),
        event.data,
    )


def data_line(payload: bytes) -> bytes:
    """An unnamed event carrying ``payload`` (OpenAI and envelope streams)."""
    return b"data: " + payload + b"\n\n"


def sse_response(
    body: Iterable[bytes], headers: dict[str, str] | None = None
) -> Response:
    """A streaming ``text/event-stream`` response."""
    return Response(
        body,
        mimetype="text/event-stream",
        headers={**_HEADERS, **(headers or {})},
        direct_passthrough=True,
    )
