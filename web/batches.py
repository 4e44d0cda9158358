"""The batches API (OpenAI's shapes), and llmq's partial output route."""

from __future__ import annotations

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag

from common.batches.schemas import (
    BatchCreateRequest,
    BatchListQuery,
    BatchOutputQuery,
    BatchPath,
)
from web import auth
from web.context import openai_list, services

bp = APIBlueprint(
    "batches", __name__, url_prefix="/v1/batches", abp_tags=[Tag(name="batches")]
)
bp.before_request(auth.require_key)


@bp.post("")
def create_batch(body: BatchCreateRequest) -> Response:
    """Create a batch from an uploaded input file; it starts ``validating``."""
    svc = services().batches
    row = svc.create(
        auth.caller().id,
        body.input_file_id,
        body.endpoint,
        body.completion_window,
        body.metadata,
    )
    return jsonify(svc.view(row))


@bp.get("")
def list_batches(query: BatchListQuery) -> Response:
    """This key's batches, newest first, as an OpenAI list."""
    svc = services().batches
    rows, has_more = svc.batches.page(auth.caller().id, query.limit, query.after)
    data = [svc.view(row) for row in rows]
    return openai_list(data, has_more)


@bp.get("/<batch_id>")
def get_batch(path: BatchPath) -> Response:
    """The batch object, with its live request counts."""
    svc = services().batches
    return jsonify(svc.view(svc.batches.get(auth.caller().id, path.batch_id)))


@bp.post("/<batch_id>/cancel")
def cancel_batch(path: BatchPath) -> Response:
    """Cancel: ``cancelling`` at once, then ``cancelled`` with what finished."""
    svc = services().batches
    return jsonify(svc.view(svc.cancel(auth.caller().id, path.batch_id)))


@bp.get("/<batch_id>/output")
def batch_output(path: BatchPath, query: BatchOutputQuery) -> Response:
    """The lines finished so far, as JSONL (``after``: the last custom_id seen)."""
    lines = services().batches.output(auth.caller().id, path.batch_id, query.after)
    return Response(lines, mimetype="application/jsonl")
