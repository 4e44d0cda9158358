"""POST /v1/chat/completions and GET /v1/models through the official OpenAI SDK."""

from __future__ import annotations

import json
import uuid

import openai
import pytest
import redis
import requests

from common.redis import keys
from tests.conftest import FAKE_PROVIDER_KEY, Stack, chat_body, wait_until

HI = [{"role": "user", "content": "hi"}]


def test_sdk_non_stream_returns_a_chat_completion(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model", messages=HI, extra_body={"fake": {"tokens": 3}}
    )
    completion = raw.parse()
    assert raw.headers["X-Job-Id"].startswith("job_")
    assert completion.object == "chat.completion"
    assert completion.model == "fake-model"
    assert completion.choices[0].message.content == "tok0 tok1 tok2 "
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        7,
        3,
    )


def test_sdk_stream_relays_every_chunk_then_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake-model",
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"fake": {"tokens": 6}},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"tok{i} " for i in range(6))
    assert all(
        c.object == "chat.completion.chunk" and c.model == "fake-model" for c in chunks
    )
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="fake-model", messages=HI, stream=True)
    )
    assert all(c.choices for c in chunks)


def test_upstream_is_called_with_its_own_model_name_key_and_extras(
    client: openai.OpenAI, upstream: str
) -> None:
    tag = uuid.uuid4().hex
    client.chat.completions.create(
        model="fake-model",
        messages=HI,
        temperature=0.5,
        extra_body={"fake": {"tag": tag}, "enable_search": True},
    )
    seen = requests.get(f"{upstream}/_requests/{tag}", timeout=5).json()
    assert seen["model"] == "upstream-model"
    assert seen["enable_search"] is True and seen["temperature"] == 0.5
    assert seen["stream"] is True
    assert seen["_authorization"] == f"Bearer {FAKE_PROVIDER_KEY}"


def test_tool_calls_are_relayed_non_stream(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="fake-model",
        messages=HI,
        extra_body={"fake": {"tool_call": True}},
        tools=[
            {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
        ],
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert (call.id, call.function.name) == ("call_1", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_tool_calls_are_relayed_as_streamed_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake-model",
        messages=HI,
        stream=True,
        extra_body={"fake": {"tool_call": True}},
    )
    arguments, names = "", []
    for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            arguments += call.function.arguments or ""
            if call.function.name:
                names.append(call.function.name)
    assert names == ["get_weather"]
    assert json.loads(arguments) == {"city": "Paris"}


def test_models_lists_enabled_chat_models_with_context_and_price(
    client: openai.OpenAI,
) -> None:
    models = {m.id: m for m in client.models.list()}
    assert {"fake-model", "other-model", "sim-model"} <= set(models)
    assert "embed-model" not in models and "locked-model" not in models
    fake = models["fake-model"].model_dump()
    assert fake["object"] == "model" and fake["owned_by"] == "fake"
    assert fake["context_length"] == 4096
    # Money is a decimal string (API.md section 8), never a float.
    assert fake["price"] == {
        "input_per_1k": "0.001",
        "output_per_1k": "0.002",
        "per_request": "0",
        "per_second": "0",
        "unit": "tokens",
        "input_free": 0,
    }


def test_models_show_only_a_keys_allowed_models(stack: Stack) -> None:
    key = stack.key(models=["sim-model"])
    sdk = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0)
    assert [m.id for m in sdk.models.list()] == ["sim-model"]


def test_simulated_model_needs_no_upstream(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="sim-model", messages=HI)
    second = client.chat.completions.create(model="sim-model", messages=HI)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage is not None and first.usage.completion_tokens == 12


@pytest.mark.parametrize("how", ["header", "base_url"])
def test_a_provider_can_be_pinned(
    stack: Stack, api_key: str, upstream: str, how: str
) -> None:
    tag = uuid.uuid4().hex
    if how == "header":
        sdk = openai.OpenAI(
            base_url=f"{stack.url}/v1",
            api_key=api_key,
            max_retries=0,
            default_headers={"X-AI-Provider": "fake2"},
        )
    else:
        sdk = openai.OpenAI(
            base_url=f"{stack.url}/providers/fake2/v1", api_key=api_key, max_retries=0
        )
    raw = sdk.chat.completions.with_raw_response.create(
        model="fake-model", messages=HI, extra_body={"fake": {"tag": tag}}
    )
    job = requests.get(
        f"{stack.url}/v1/jobs/{raw.headers['X-Job-Id']}",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=5,
    ).json()
    assert job["provider"] == "fake2"
    # fake2 names no key variable, so no Authorization header went upstream.
    assert (
        requests.get(f"{upstream}/_requests/{tag}", timeout=5).json()["_authorization"]
        is None
    )
    if how == "base_url":
        assert {m.id for m in sdk.models.list()} == {"fake-model", "other-model"}


def test_pinning_an_unknown_provider_is_invalid_model(
    stack: Stack, api_key: str
) -> None:
    sdk = openai.OpenAI(
        base_url=f"{stack.url}/providers/nope/v1", api_key=api_key, max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="fake-model", messages=HI)
    assert info.value.code == "invalid_model"


@pytest.mark.parametrize("status", [500, 429, 400, 401, 403])
def test_upstream_failure_is_our_502_upstream_error_never_our_401(
    client: openai.OpenAI, status: int
) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="fake-model", messages=HI, extra_body={"fake": {"status": status}}
        )
    assert info.value.status_code == 502
    assert info.value.code == "upstream_error"
    assert info.value.response.headers["X-Job-Id"].startswith("job_")
    assert FAKE_PROVIDER_KEY not in info.value.message


def test_upstream_failure_before_first_token_streams_as_an_http_error(
    client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        list(
            client.chat.completions.create(
                model="fake-model",
                messages=HI,
                stream=True,
                extra_body={"fake": {"status": 500}},
            )
        )
    assert info.value.status_code == 502


def test_hanging_upstream_is_a_504_timeout(client: openai.OpenAI) -> None:
    # The fake provider's first-token timeout is 3 s in the test catalog.
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="fake-model", messages=HI, extra_body={"fake": {"hang": 6}}
        )
    assert info.value.status_code == 504
    assert info.value.code == "timeout"


def test_stream_cut_mid_way_raises_in_the_sdk_and_keeps_partial_text(
    client: openai.OpenAI, stack: Stack, auth: dict[str, str]
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model",
        messages=HI,
        stream=True,
        extra_body={"fake": {"tokens": 5, "cut_after": 2}},
    )
    text = ""
    with pytest.raises(openai.APIError):
        for chunk in raw.parse():
            text += chunk.choices[0].delta.content or ""
    assert text == "tok0 tok1 "
    job = requests.get(
        f"{stack.url}/v1/jobs/{raw.headers['X-Job-Id']}", headers=auth, timeout=5
    ).json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "upstream_error"
    assert job["result"]["choices"][0]["message"]["content"] == "tok0 tok1 "


def _first_chunk_then_drop(
    stack: Stack, auth: dict[str, str], extra: dict[str, str]
) -> str:
    body = chat_body(stream=True, fake={"tokens": 200, "delay": 0.05})
    resp = requests.post(
        f"{stack.url}/v1/chat/completions",
        json=body,
        headers={**auth, **extra},
        stream=True,
        timeout=10,
    )
    job_id = resp.headers["X-Job-Id"]
    lines = resp.iter_lines()
    assert next(line for line in lines if line).startswith(b"data: ")
    resp.close()
    return job_id


def test_client_disconnect_cancels_the_job(stack: Stack, auth: dict[str, str]) -> None:
    job_id = _first_chunk_then_drop(stack, auth, {})
    url = f"{stack.url}/v1/jobs/{job_id}"
    job = wait_until(
        lambda: (
            (j := requests.get(url, headers=auth, timeout=5).json())["status"]
            == "cancelled"
            and j
        ),
        10,
        "the job to be cancelled",
    )
    generated = job["usage"]["completion_tokens"]
    assert 0 < generated < 200


def test_detached_stream_runs_on_after_disconnect(
    stack: Stack, auth: dict[str, str]
) -> None:
    job_id = _first_chunk_then_drop(stack, auth, {"X-LLMQ-Detach": "1"})
    job = requests.get(
        f"{stack.url}/v1/jobs/{job_id}?wait=30", headers=auth, timeout=40
    ).json()
    assert job["status"] == "succeeded"
    assert job["usage"]["completion_tokens"] == 200


def test_a_silence_longer_than_the_blocking_read_window_is_no_503(
    client: openai.OpenAI, stack: Stack, auth: dict[str, str]
) -> None:
    # Blocking Redis reads get keepalive + 5 s (6 s in tests); the first token
    # of this reply comes after 8 s, which the model's timeouts allow.
    completion = client.chat.completions.create(
        model="patient-model", messages=HI, extra_body={"fake": {"first_delay": 8}}
    )
    assert completion.choices[0].message.content == "".join(
        f"tok{i} " for i in range(5)
    )
    job = requests.post(
        f"{stack.url}/v1/jobs",
        headers=auth,
        timeout=10,
        json=chat_body(model="patient-model", fake={"first_delay": 8}),
    ).json()
    waited = requests.get(
        f"{stack.url}/v1/jobs/{job['id']}?wait=20", headers=auth, timeout=30
    )
    assert waited.status_code == 200 and waited.json()["status"] == "succeeded"


def test_a_chat_request_takes_no_subscription_of_its_own(
    stack: Stack, auth: dict[str, str]
) -> None:
    """The web hears the jobs it submits on its process channel (one per process)."""
    client = redis.Redis.from_url(stack.redis_url)
    for stream in (False, True):
        resp = requests.post(
            f"{stack.url}/v1/chat/completions",
            json=chat_body(stream=stream),
            headers=auth,
            timeout=30,
        )
        assert resp.status_code == 200
        _ = resp.content
        job_id = resp.headers["X-Job-Id"]
        assert client.pubsub_numsub(keys.notify_channel(job_id))[0][1] == 0
        notify = client.hget(keys.job_key(job_id), "notify")
        assert notify in client.pubsub_channels(f"{keys.PREFIX}:proc:*")
