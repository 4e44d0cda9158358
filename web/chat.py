"""OpenAI-compatible chat completions, served through the job machinery."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Response, jsonify, request
from flask_openapi3 import APIBlueprint, Tag

from common.completions import usage_chunk
from common.jobs.events import Event
from common.jobs.model import EventType, JobRecord
from common.jsoncodec import dumps_bytes, loads
from common.schemas import ChatRequest, ProviderPath
from web import auth
from web.context import services
from web.relay import (
    await_result,
    cancel_on_disconnect,
    follow_from_first_output,
    submitted,
    wants_detach,
)
from web.sse import DONE, KEEPALIVE, data_line, sse_response

bp = APIBlueprint("chat", __name__, abp_tags=[Tag(name="chat")])
bp.before_request(auth.require_key)


@bp.post("/v1/chat/completions")
@auth.checked_by_submit
def create_chat_completion(body: ChatRequest) -> Response:
    """Create a chat completion (stream or not); the reply names its job in X-Job-Id."""
    return _complete(body, request.headers.get("X-AI-Provider") or None)


@bp.post("/providers/<provider>/v1/chat/completions")
@auth.checked_by_submit
def create_pinned_chat_completion(path: ProviderPath, body: ChatRequest) -> Response:
    """Create a chat completion served only by ``provider``."""
    return _complete(body, path.provider)


def _complete(body: ChatRequest, provider: str | None) -> Response:
    svc = services()
    job = submitted(
        svc.jobs.submit(auth.caller(), body, provider=provider, follow=True)
    )
    headers = {"X-Job-Id": job.id}
    if not body.stream:
        done = await_result(job)
        response = jsonify(done["result"])
        response.headers.update(headers)
        return response
    relay = _relay(job, follow_from_first_output(job), body.include_usage)
    return sse_response(cancel_on_disconnect(relay, job, wants_detach()), headers)


def _relay(
    job: JobRecord, events: Iterator[Event | None], include_usage: bool
) -> Iterator[bytes]:
    """OpenAI's stream: chunk lines, an optional usage chunk, then ``[DONE]``."""
    for event in events:
        if event is None:
            yield KEEPALIVE
        elif event.type == EventType.DELTA:
            yield data_line(event.data)
        elif event.type == EventType.ERROR:
            yield data_line(dumps_bytes({"error": loads(event.data)}))
            return
        elif event.type == EventType.DONE:
            # The done event carries the whole reply: parse it only for its usage.
            usage = loads(event.data).get("usage") if include_usage else None
            if usage:
                chunk = usage_chunk(job.id, job.model, int(job.created_at), usage)
                yield data_line(dumps_bytes(chunk))
            yield DONE
            return
