"""The pydantic models that validate requests also generate the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

from common.config import load_settings
from web.app import create_app


def test_every_route_is_documented_with_its_request_model(
    catalog_path: Path, tmp_path: Path
) -> None:
    settings = load_settings(
        {
            "LLMQ_CATALOG": str(catalog_path),
            "DATABASE_URL": f"sqlite:///{tmp_path}/k.db",
        }
    )
    doc = create_app(settings).api_doc
    assert doc["openapi"].startswith("3.")
    body = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ChatRequest"
    )
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}/events",
        "/v1/models",
        "/api/llm/chat",
        "/api/llm/models",
        "/admin/keys",
        "/providers/{provider}/v1/chat/completions",
    ):
        assert path in doc["paths"], path
    chat = doc["components"]["schemas"]["ChatRequest"]
    assert {"model", "messages"} <= set(chat["required"])
    temperature = chat["properties"]["temperature"]["anyOf"][0]
    assert (temperature["minimum"], temperature["exclusiveMaximum"]) == (0, 2)
    job = doc["components"]["schemas"]["JobCreateRequest"]["properties"]["priority"]
    assert set(job["enum"]) == {"interactive", "bulk"}
