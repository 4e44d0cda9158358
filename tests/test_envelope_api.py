"""The envelope API of seed 001 and the plain-text route of seed 000."""

from __future__ import annotations

import json

import pytest
import requests

from tests.conftest import Stack, chat_body, sse_events


def test_models_carry_every_field_seed_001_lists(
    stack: Stack, auth: dict[str, str]
) -> None:
    resp = requests.get(f"{stack.url}/api/llm/models", headers=auth, timeout=10)
    body = resp.json()
    assert (
        resp.status_code == 200 and body["code"] == 200 and body["message"] == "success"
    )
    entry = next(m for m in body["data"] if m["title"] == "fake-model")
    assert set(entry) == {
        "id",
        "title",
        "img",
        "name",
        "description",
        "keyword",
        "time",
        "tag1",
        "tag2",
        "type",
        "is_featured",
        "created_at",
        "updated_at",
        "price",
    }
    assert entry["price"]["input_per_1k"] == "0.001"
    assert isinstance(entry["id"], int)
    assert (entry["name"], entry["tag1"], entry["tag2"]) == ("Fake", "测试", "Fake")
    assert entry["type"] == 0 and entry["is_featured"] is True
    assert all(m["type"] == 0 for m in body["data"])
    assert "embed-model" not in {m["title"] for m in body["data"]}


def test_chat_answers_content_finish_reason_and_usage(
    stack: Stack, auth: dict[str, str]
) -> None:
    resp = requests.post(
        f"{stack.url}/api/llm/chat",
        json=chat_body(fake={"tokens": 2}),
        headers=auth,
        timeout=10,
    )
    assert resp.status_code == 200 and resp.headers["X-Job-Id"].startswith("job_")
    assert resp.json() == {
        "code": 200,
        "message": "success",
        "data": {
            "content": "tok0 tok1 ",
            "finish_reason": "stop",
            "usage": {"input_tokens": 7, "output_tokens": 2, "total_tokens": 9},
        },
    }


def test_chat_stream_has_content_events_a_usage_event_and_done(
    stack: Stack, auth: dict[str, str]
) -> None:
    with requests.post(
        f"{stack.url}/api/llm/chat",
        json=chat_body(stream=True, fake={"tokens": 3}),
        headers=auth,
        stream=True,
        timeout=10,
    ) as resp:
        data = [e["data"] for e in sse_events(resp) if "data" in e]
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    # Tokens sent back to back may be merged into fewer events (group commit).
    assert "".join(e["content"] for e in events[:-1]) == "tok0 tok1 tok2 "
    assert all(e["finish_reason"] is None for e in events[:-1])
    assert events[-1]["finish_reason"] == "stop"
    assert events[-1]["usage"] == {
        "input_tokens": 7,
        "output_tokens": 3,
        "total_tokens": 10,
    }


def test_key_may_come_in_the_body(stack: Stack, api_key: str) -> None:
    resp = requests.post(
        f"{stack.url}/api/llm/chat",
        json=chat_body(api_key=api_key, fake={"tokens": 1}),
        timeout=10,
    )
    assert resp.status_code == 200 and resp.json()["data"]["content"] == "tok0 "


@pytest.mark.parametrize("route", ["/api/llm/chat", "/ai_api/llm"])
def test_a_body_key_that_is_not_text_is_401(stack: Stack, route: str) -> None:
    """A lone surrogate (valid JSON, no valid text) was hashed, and failed: a 500."""
    body = {**chat_body(), "message": chat_body()["messages"], "api_key": "\ud800"}
    resp = requests.post(
        f"{stack.url}{route}",
        data=json.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert resp.status_code == 401, resp.text
    assert resp.json() == {"code": 401, "message": "invalid API key", "data": None}


def test_body_key_is_not_accepted_on_openai_routes(stack: Stack, api_key: str) -> None:
    resp = requests.post(
        f"{stack.url}/v1/chat/completions", json=chat_body(api_key=api_key), timeout=10
    )
    assert resp.status_code == 401


def test_upstream_failure_is_an_envelope_502(
    stack: Stack, auth: dict[str, str]
) -> None:
    resp = requests.post(
        f"{stack.url}/api/llm/chat",
        json=chat_body(fake={"status": 500}),
        headers=auth,
        timeout=10,
    )
    assert resp.status_code == 502
    assert resp.json()["code"] == 502 and resp.json()["data"] is None


def test_seed_000_route_answers_plain_text(stack: Stack, api_key: str) -> None:
    body = {
        "model": "fake-model",
        "message": [{"role": "user", "content": "你好"}],
        "api_key": api_key,
        "fake": {"tokens": 2},
    }
    resp = requests.post(f"{stack.url}/ai_api/llm", json=body, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert resp.text == "tok0 tok1 "
    with requests.post(
        f"{stack.url}/ai_api/llm",
        json={**body, "stream": True},
        stream=True,
        timeout=10,
    ) as streamed:
        assert b"".join(streamed.iter_content(None)).decode() == "tok0 tok1 "


def test_seed_000_route_wants_the_last_message_from_the_user(
    stack: Stack, api_key: str
) -> None:
    body = {
        "model": "fake-model",
        "api_key": api_key,
        "message": [{"role": "assistant", "content": "hello"}],
    }
    resp = requests.post(f"{stack.url}/ai_api/llm", json=body, timeout=10)
    assert resp.status_code == 400 and resp.json()["code"] == 400
