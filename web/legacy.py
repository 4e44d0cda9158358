"""Seed 000's ``POST /ai_api/llm``: the reply as plain UTF-8 text, streamed if asked."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from common.completions import delta_texts, reply_text
from common.jobs.events import Event
from common.jobs.model import EventType
from common.jsoncodec import loads
from common.schemas import LegacyChatRequest
from web import auth
from web.context import services
from web.relay import (
    await_result,
    cancel_on_disconnect,
    follow_from_first_output,
    submitted,
)

bp = APIBlueprint(
    "legacy", __name__, url_prefix="/ai_api", abp_tags=[Tag(name="legacy")]
)
bp.before_request(auth.require_key_or_body)

_TEXT = "text/plain; charset=utf-8"


@bp.post("/llm")
@auth.checked_by_submit
def legacy_chat(body: LegacyChatRequest) -> Response:
    """Chat answered as plain text; with ``stream`` the text flows as it is made."""
    request = body.to_chat()
    job = submitted(services().jobs.submit(auth.caller(), request, follow=True))
    headers = {"X-Job-Id": job.id}
    if not body.stream:
        done = await_result(job)
        return Response(
            reply_text(done["result"])[0], content_type=_TEXT, headers=headers
        )
    pieces = _text(follow_from_first_output(job))
    return Response(
        cancel_on_disconnect(pieces, job, detach=False),
        content_type=_TEXT,
        headers=headers,
        direct_passthrough=True,
    )


def _text(events: Iterator[Event | None]) -> Iterator[bytes]:
    for event in events:
        if event is None:
            continue
        if event.type == EventType.DELTA:
            for text in delta_texts(loads(event.data)):
                yield text.encode()
        elif event.type in (EventType.ERROR, EventType.DONE):
            return
