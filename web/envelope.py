"""The envelope API of seed 001: ``/api/llm/chat`` and ``/api/llm/models``.

Every answer is ``{"code", "message", "data"}``; streams carry
``{"content", "finish_reason"}`` events, a last one with ``usage``, then ``[DONE]``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag

from common.catalog import ModelConfig
from common.completions import delta_texts, reply_text
from common.jobs.model import EventType, JobRecord
from common.jsoncodec import dumps, loads
from common.schemas import EnvelopeChatRequest
from web import auth
from web.context import services
from web.models import visible_models
from web.relay import (
    await_result,
    cancel_on_disconnect,
    follow_from_first_output,
    submitted,
    wants_detach,
)
from web.sse import DONE, KEEPALIVE, data_line, sse_response

bp = APIBlueprint(
    "envelope", __name__, url_prefix="/api/llm", abp_tags=[Tag(name="envelope")]
)
bp.before_request(auth.require_key_or_body)


def envelope(data: Any) -> Response:
    return jsonify({"code": 200, "message": "success", "data": data})


def envelope_usage(usage: dict[str, Any] | None) -> dict[str, int]:
    """OpenAI usage in the seed's names."""
    usage = usage or {}
    return {
        "input_tokens": int(usage.get("prompt_tokens", 0)),
        "output_tokens": int(usage.get("completion_tokens", 0)),
        "total_tokens": int(usage.get("total_tokens", 0)),
    }


def _iso(value: dt.datetime | None) -> str | None:
    return value.replace(tzinfo=None).isoformat(timespec="seconds") if value else None


def catalog_entry(number: int, model: ModelConfig) -> dict[str, Any]:
    """A model as seed 001 lists it; ``title`` is the id used in calls."""
    tags = [*model.tags, "", ""]
    released = model.released or (model.created_at.date() if model.created_at else None)
    return {
        "id": number,
        "title": model.id,
        "img": model.img,
        "name": model.name or model.id,
        "description": model.description,
        "keyword": model.keyword,
        "time": released.isoformat() if released else None,
        "tag1": tags[0],
        "tag2": tags[1],
        "type": model.type,
        "is_featured": model.featured,
        "created_at": _iso(model.created_at),
        "updated_at": _iso(model.updated_at),
        "price": model.price.shown(),
    }


@bp.get("/models")
def list_envelope_models() -> Response:
    """The language models (type 0) this key may use, in seed 001's fields."""
    return envelope([catalog_entry(i, m) for i, m in enumerate(visible_models(), 1)])


@bp.post("/chat")
@auth.checked_by_submit
def envelope_chat(body: EnvelopeChatRequest) -> Response:
    """Chat in the envelope format, streamed or not."""
    job = submitted(services().jobs.submit(auth.caller(), body, follow=True))
    headers = {"X-Job-Id": job.id}
    if not body.stream:
        done = await_result(job)
        text, finish_reason = reply_text(done["result"])
        response = envelope(
            {
                "content": text,
                "finish_reason": finish_reason,
                "usage": envelope_usage(done["usage"]),
            }
        )
        response.headers.update(headers)
        return response
    relay = _relay(job, follow_from_first_output(job))
    return sse_response(cancel_on_disconnect(relay, job, wants_detach()), headers)


def _relay(job: JobRecord, events: Iterator[Any]) -> Iterator[bytes]:
    for event in events:
        if event is None:
            yield KEEPALIVE
        elif event.type == EventType.DELTA:
            for text in delta_texts(loads(event.data)):
                piece = {"content": text, "finish_reason": None}
                yield data_line(dumps(piece).encode())
        elif event.type == EventType.ERROR:
            error = loads(event.data)
            status = 504 if error.get("code") == "timeout" else 502
            yield data_line(
                dumps(
                    {"code": status, "message": error.get("message"), "data": None}
                ).encode()
            )
            return
        elif event.type == EventType.DONE:
            final = loads(event.data)
            last = {
                "content": "",
                "finish_reason": reply_text(final.get("result"))[1] or "stop",
                "usage": envelope_usage(final.get("usage")),
            }
            yield data_line(dumps(last).encode())
            yield DONE
            return
