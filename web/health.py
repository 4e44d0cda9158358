"""Liveness: the process answers."""

from __future__ import annotations

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag

bp = APIBlueprint("health", __name__, abp_tags=[Tag(name="operations")])


@bp.get("/healthz")
def healthz() -> Response:
    """The web process is up (it checks nothing else)."""
    return jsonify({"status": "ok"})
