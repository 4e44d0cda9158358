"""Admin routes for API keys, guarded by ``LLMQ_ADMIN_KEY``."""

from __future__ import annotations

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag

from common.errors import NotFoundError
from common.schemas import KeyCreateRequest, KeyPath
from web import auth
from web.context import services

bp = APIBlueprint("admin", __name__, url_prefix="/admin", abp_tags=[Tag(name="admin")])
bp.before_request(auth.require_admin)


@bp.post("/keys")
def create_key(body: KeyCreateRequest) -> tuple[Response, int]:
    """Create a key; the answer is the only time the key itself is shown."""
    row, raw = services().keys.create(**body.model_dump())
    return jsonify({**row.to_dict(), "key": raw}), 201


@bp.get("/keys")
def list_keys() -> Response:
    """Every key, without the keys themselves."""
    rows = services().keys.list()
    return jsonify({"object": "list", "data": [row.to_dict() for row in rows]})


@bp.get("/keys/<key_id>")
def get_key(path: KeyPath) -> Response:
    """One key's details."""
    row = services().keys.get(path.key_id)
    if row is None:
        raise NotFoundError(f"no key {path.key_id!r}", param="key_id")
    return jsonify(row.to_dict())


@bp.delete("/keys/<key_id>")
def revoke_key(path: KeyPath) -> Response:
    """Revoke a key: it stops working at once."""
    row = services().keys.revoke(path.key_id)
    if row is None:
        raise NotFoundError(f"no key {path.key_id!r}", param="key_id")
    return jsonify(row.to_dict())
