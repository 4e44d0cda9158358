"""OpenAI-compatible model listing: the catalog models this key may use."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag

from common.catalog import ModelConfig, ModelType
from common.errors import InvalidModelError
from common.schemas import ProviderPath
from web import auth
from web.context import services

bp = APIBlueprint("models", __name__, abp_tags=[Tag(name="models")])
bp.before_request(auth.require_key)


def model_object(model: ModelConfig) -> dict[str, Any]:
    """OpenAI's model object, with llmq's context length and price."""
    return {
        "id": model.id,
        "object": "model",
        "created": int(model.created_at.timestamp()) if model.created_at else 0,
        "owned_by": model.provider,
        "name": model.name or model.id,
        "description": model.description,
        "type": model.type,
        "context_length": model.context_length,
        "price": model.price.shown(),
    }


def visible_models(provider: str | None = None) -> list[ModelConfig]:
    """Enabled chat models the caller's key may use, optionally of one provider."""
    catalog = services().settings.catalog
    if provider is not None:
        config = catalog.providers.get(provider)
        if config is None or not config.enabled:
            raise InvalidModelError(f"unknown provider {provider!r}", param="provider")
    allowed = auth.caller().models
    return [
        m
        for m in catalog.enabled_models(provider)
        if m.type == ModelType.LANGUAGE and (allowed is None or m.id in allowed)
    ]


@bp.get("/v1/models")
def list_models() -> Response:
    """List the models this key may use."""
    return jsonify(
        {"object": "list", "data": [model_object(m) for m in visible_models()]}
    )


@bp.get("/providers/<provider>/v1/models")
def list_provider_models(path: ProviderPath) -> Response:
    """List one provider's models that this key may use."""
    data = [model_object(m) for m in visible_models(path.provider)]
    return jsonify({"object": "list", "data": data})
