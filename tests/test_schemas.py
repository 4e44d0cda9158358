"""Unit tests for request validation (common/schemas.py) and common/errors.py."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from common.errors import (
    ConflictError,
    ForbiddenError,
    GatewayError,
    InvalidJSONError,
    InvalidMessagesError,
    InvalidModelError,
    InvalidRequestError,
    JobCancelledError,
    NotFoundError,
    PayloadTooLargeError,
    ProviderBadResponseError,
    ProviderError,
    ProviderRateLimitedError,
    ProviderRejectedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    UnauthorizedError,
    UnavailableError,
)
from common.schemas import (
    GATEWAY_FIELDS,
    ChatRequest,
    EnvelopeChatRequest,
    JobCreateRequest,
    LegacyChatRequest,
    to_gateway_error,
)

USER = {"role": "user", "content": "hello"}


def body(**fields: Any) -> dict[str, Any]:
    """A valid chat body with ``fields`` overriding or adding keys."""
    return {"model": "demo-chat", "messages": [USER], **fields}


def without(key: str) -> dict[str, Any]:
    out = body()
    del out[key]
    return out


def gateway_error(model: type, data: Any) -> InvalidRequestError:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return to_gateway_error(info.value)


# --- invalid bodies ---


@pytest.mark.parametrize(
    "data", [[USER], "a string", None, 42], ids=["list", "str", "none", "int"]
)
@pytest.mark.parametrize("model", [ChatRequest, JobCreateRequest, EnvelopeChatRequest])
def test_body_that_is_not_an_object_is_invalid_json(model: type, data: Any) -> None:
    error = gateway_error(model, data)
    assert isinstance(error, InvalidJSONError)
    assert (error.code, error.status, error.param) == ("invalid_json", 400, None)


@pytest.mark.parametrize(
    "data",
    [without("model"), body(model=""), body(model=None), body(model=123)],
    ids=["missing", "empty", "null", "not-a-string"],
)
def test_missing_or_empty_model_is_invalid_model(data: dict[str, Any]) -> None:
    error = gateway_error(ChatRequest, data)
    assert isinstance(error, InvalidModelError)
    assert (error.code, error.status, error.param) == ("invalid_model", 400, "model")


@pytest.mark.parametrize(
    ("data", "param"),
    [
        (without("messages"), "messages"),
        (body(messages=[]), "messages"),
        (body(messages="hello"), "messages"),
        (body(messages={"role": "user", "content": "hi"}), "messages"),
        (body(messages=[{"role": "robot", "content": "hi"}]), "messages.0.role"),
        (body(messages=[{"content": "hi"}]), "messages.0.role"),
        (body(messages=[{"role": "user"}]), "messages.0"),
        (body(messages=[{"role": "user", "content": None}]), "messages.0"),
        (body(messages=[USER, "not an object"]), "messages.1"),
        (
            body(messages=[{"role": "user", "content": [{"type": "audio", "x": 1}]}]),
            None,
        ),
        (body(messages=[{"role": "user", "content": [{"text": "no type"}]}]), None),
        (body(messages=[{"role": "user", "content": [{"type": "text"}]}]), None),
        (body(messages=[{"role": "tool", "content": "42"}]), "messages.0"),
        (body(messages=[{"role": "assistant", "content": None}]), "messages.0"),
    ],
    ids=[
        "missing",
        "empty-list",
        "string",
        "object",
        "bad-role",
        "no-role",
        "user-without-content",
        "user-null-content",
        "non-object-message",
        "bad-part-type",
        "part-without-type",
        "text-part-without-text",
        "tool-without-tool-call-id",
        "assistant-without-content-or-tool-calls",
    ],
)
def test_bad_messages_are_invalid_messages(
    data: dict[str, Any], param: str | None
) -> None:
    error = gateway_error(ChatRequest, data)
    assert isinstance(error, InvalidMessagesError)
    assert (error.code, error.status) == ("invalid_messages", 400)
    assert error.param is not None and error.param.startswith("messages")
    if param is not None:
        assert error.param == param
    assert error.message.startswith(error.param)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2),
        ("temperature", 2.5),
        ("temperature", -0.1),
        ("temperature", "0.5"),
        ("top_p", 0),
        ("top_p", 1.5),
        ("max_tokens", 0),
        ("max_tokens", -1),
        ("max_tokens", 1.5),
        ("max_completion_tokens", 0),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", 5),
        ("n", 2),
        ("n", 0),
        ("stream", "yes"),
        ("stream", 1),
        ("seed", "7"),
        ("stream_options", {"include_usage": "yes"}),
    ],
)
def test_out_of_range_or_mistyped_params_are_invalid_params(
    field: str, value: Any
) -> None:
    error = gateway_error(ChatRequest, body(**{field: value}))
    assert type(error) is InvalidRequestError
    assert (error.code, error.status) == ("invalid_params", 400)
    assert error.type == "invalid_request_error"
    assert error.param is not None and error.param.split(".")[0] == field


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2),
        ("temperature", -0.1),
        ("temperature", "0.5"),
        ("top_p", 0),
        ("top_p", 1.5),
        ("max_tokens", 0),
        ("max_completion_tokens", 0),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3),
        ("n", 2),
        ("stream", "yes"),
    ],
)
def test_invalid_scalar_param_names_the_field(field: str, value: Any) -> None:
    error = gateway_error(ChatRequest, body(**{field: value}))
    assert error.param == field
    assert error.message.startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("data", "param"),
    [
        (body(stop=["a", "b", "c", "d", "e"]), "stop"),
        (
            # The deepest complaint wins: the bad part itself, not the str branch.
            body(messages=[{"role": "user", "content": [{"type": "audio"}]}]),
            "messages.0.content.0",
        ),
    ],
    ids=["stop-list-too-long", "bad-content-part"],
)
def test_param_of_a_union_field_names_the_field_not_a_union_branch(
    data: dict[str, Any], param: str
) -> None:
    # pydantic adds the failing union member ("str") to the error location;
    # a client should see the request field, not "stop.str".
    error = gateway_error(ChatRequest, data)
    assert error.param == param


# --- valid bodies ---


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0),
        ("temperature", 0.0),
        ("temperature", 1.99),
        ("top_p", 1),
        ("top_p", 0.01),
        ("max_tokens", 1),
        ("max_completion_tokens", 4096),
        ("presence_penalty", 2),
        ("frequency_penalty", -2),
        ("stop", "\n\n"),
        ("stop", ["a", "b", "c", "d"]),
        ("stop", []),
        ("n", 1),
        ("stream", True),
        ("seed", 42),
        ("tool_choice", "auto"),
        ("tool_choice", {"type": "function", "function": {"name": "f"}}),
        ("response_format", {"type": "json_object"}),
        ("user", "u-1"),
    ],
)
def test_valid_params_are_accepted_and_kept(field: str, value: Any) -> None:
    request = ChatRequest.model_validate(body(**{field: value}))
    assert getattr(request, field) == value
    if field not in GATEWAY_FIELDS:
        assert request.upstream_body()[field] == value


def test_minimal_request_has_openai_defaults() -> None:
    request = ChatRequest.model_validate(body())
    assert request.model == "demo-chat"
    assert request.stream is False
    assert request.include_usage is False
    assert request.upstream_body() == {
        "messages": [{"role": "user", "content": "hello"}]
    }


def test_content_as_text_and_image_parts_is_accepted() -> None:
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {
            "type": "image_url",
            "image_url": {"url": "https://example.com/cat.png", "detail": "low"},
        },
        {"type": "image_url", "image_url": "data:image/png;base64,AAAA"},
    ]
    request = ChatRequest.model_validate(
        body(messages=[{"role": "user", "content": content}])
    )
    assert request.upstream_body()["messages"] == [{"role": "user", "content": content}]


def test_assistant_tool_calls_with_null_content_and_tool_reply_are_accepted() -> None:
    tool_call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "杭州"}'},
    }
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    request = ChatRequest.model_validate(body(messages=messages))
    assert request.messages[2].content is None
    assert request.messages[2].tool_calls == [tool_call]
    assert request.messages[3].tool_call_id == "call_1"
    upstream = request.upstream_body()["messages"]
    assert upstream[2] == {"role": "assistant", "tool_calls": [tool_call]}
    assert upstream[3] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}


@pytest.mark.parametrize("role", ["system", "developer", "user", "assistant"])
def test_every_plain_role_with_text_content_is_accepted(role: str) -> None:
    request = ChatRequest.model_validate(
        body(messages=[{"role": role, "content": "x"}])
    )
    assert request.messages[0].role == role


def test_extra_message_keys_pass_through_upstream() -> None:
    message = {
        "role": "assistant",
        "content": "x",
        "name": "bot",
        "reasoning_content": "hmm",
    }
    request = ChatRequest.model_validate(body(messages=[USER, message]))
    assert request.upstream_body()["messages"][1] == message


def test_unknown_extra_fields_pass_through_into_upstream_body() -> None:
    request = ChatRequest.model_validate(
        body(enable_search=True, top_k=20, parallel_tool_calls=False, temperature=0.3)
    )
    upstream = request.upstream_body()
    assert upstream["enable_search"] is True
    assert upstream["top_k"] == 20
    assert upstream["parallel_tool_calls"] is False
    assert upstream["temperature"] == 0.3


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        (ChatRequest, {}),
        (JobCreateRequest, {"priority": "bulk", "metadata": {"user": "u1"}}),
        (EnvelopeChatRequest, {"api_key": "sk-llmq-secret"}),
    ],
)
def test_gateway_fields_never_reach_upstream_body(
    model: type, extra: dict[str, Any]
) -> None:
    data = body(stream=True, enable_search=True, **extra)
    if model is ChatRequest:
        data.update(priority="bulk", metadata={"a": 1}, api_key="sk-llmq-secret")
    upstream = model.model_validate(data).upstream_body()
    assert not GATEWAY_FIELDS & upstream.keys()
    for name in ("model", "stream", "priority", "metadata", "api_key"):
        assert name not in upstream
    assert "sk-llmq-secret" not in repr(upstream)
    assert upstream["enable_search"] is True


@pytest.mark.parametrize(
    ("stream_options", "expected"),
    [
        (None, False),
        ({}, False),
        ({"include_usage": False}, False),
        ({"include_usage": True}, True),
    ],
)
def test_include_usage_reflects_stream_options(
    stream_options: dict[str, Any] | None, expected: bool
) -> None:
    data = body(stream=True)
    if stream_options is not None:
        data["stream_options"] = stream_options
    assert ChatRequest.model_validate(data).include_usage is expected


# --- job, envelope and legacy requests ---


@pytest.mark.parametrize("priority", ["interactive", "bulk"])
def test_job_priority_accepts_interactive_and_bulk(priority: str) -> None:
    assert JobCreateRequest.model_validate(body(priority=priority)).priority == priority


def test_job_priority_defaults_to_interactive() -> None:
    request = JobCreateRequest.model_validate(body())
    assert request.priority == "interactive"
    assert request.metadata is None


@pytest.mark.parametrize("priority", ["high", "Bulk", "", 1, None])
def test_job_priority_rejects_other_values(priority: Any) -> None:
    error = gateway_error(JobCreateRequest, body(priority=priority))
    assert (error.code, error.status, error.param) == (
        "invalid_params",
        400,
        "priority",
    )


def test_job_metadata_must_be_an_object() -> None:
    error = gateway_error(JobCreateRequest, body(metadata=["a"]))
    assert (error.code, error.param) == ("invalid_params", "metadata")


def test_envelope_request_carries_api_key_outside_upstream_body() -> None:
    request = EnvelopeChatRequest.model_validate(body(api_key="sk-llmq-1"))
    assert request.api_key == "sk-llmq-1"
    assert "api_key" not in request.upstream_body()


def legacy(**fields: Any) -> dict[str, Any]:
    return {"model": "demo-chat", "message": [USER], **fields}


def test_legacy_request_to_chat_keeps_model_stream_and_messages() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "assistant", "content": "earlier"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]
    request = LegacyChatRequest.model_validate(
        legacy(message=messages, stream=True, api_key="sk-llmq-1")
    )
    chat = request.to_chat()
    assert isinstance(chat, ChatRequest)
    assert chat.model == "demo-chat"
    assert chat.stream is True
    assert chat.messages == request.message
    assert [m.model_dump(exclude_none=True) for m in chat.messages] == messages
    assert "api_key" not in chat.upstream_body()
    assert "sk-llmq-1" not in repr(chat.model_dump())


def test_legacy_request_passes_extra_fields_to_chat() -> None:
    chat = LegacyChatRequest.model_validate(legacy(temperature=0.5)).to_chat()
    assert chat.temperature == 0.5


@pytest.mark.parametrize("role", ["assistant", "system", "tool"])
def test_legacy_request_last_message_must_be_user(role: str) -> None:
    last = {"role": role, "content": "x"}
    if role == "tool":
        last["tool_call_id"] = "call_1"
    error = gateway_error(LegacyChatRequest, legacy(message=[USER, last]))
    assert (error.code, error.status) == ("invalid_messages", 400)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"model": "demo-chat", "messages": [USER]}, "invalid_messages"),
        (legacy(message=[]), "invalid_messages"),
        (legacy(model=""), "invalid_model"),
        ([USER], "invalid_json"),
    ],
    ids=["messages-instead-of-message", "empty-message", "empty-model", "list-body"],
)
def test_legacy_request_maps_errors_like_chat(data: Any, code: str) -> None:
    assert gateway_error(LegacyChatRequest, data).code == code


# --- common.errors ---


@pytest.mark.parametrize(
    ("code", "status", "klass"),
    [
        ("timeout", 504, ProviderTimeoutError),
        ("upstream_error", 502, ProviderError),
        ("invalid_model", 400, InvalidModelError),
        ("invalid_messages", 400, InvalidMessagesError),
        ("invalid_json", 400, InvalidJSONError),
        ("invalid_params", 400, InvalidRequestError),
        ("payload_too_large", 413, PayloadTooLargeError),
        ("unauthorized", 401, UnauthorizedError),
        ("forbidden", 403, ForbiddenError),
        ("not_found", 404, NotFoundError),
        ("conflict", 409, ConflictError),
        ("cancelled", 409, JobCancelledError),
        ("unavailable", 503, UnavailableError),
    ],
)
def test_from_dict_round_trips_code_and_status(
    code: str, status: int, klass: type
) -> None:
    original = klass("something failed", param="model")
    rebuilt = GatewayError.from_dict(original.to_dict())
    assert type(rebuilt) is klass
    assert (rebuilt.code, rebuilt.status) == (code, status)
    assert rebuilt.message == "something failed"
    assert rebuilt.param == "model"
    assert rebuilt.to_dict() == original.to_dict()


@pytest.mark.parametrize(
    "data",
    [{"code": "no_such_code", "message": "x"}, {"message": "x"}, {}],
    ids=["unknown-code", "no-code", "empty"],
)
def test_from_dict_with_unknown_code_is_an_upstream_error(data: dict[str, Any]) -> None:
    error = GatewayError.from_dict(data)
    assert type(error) is ProviderError
    assert (error.code, error.status) == ("upstream_error", 502)


def test_from_dict_uses_code_as_message_when_message_is_missing() -> None:
    error = GatewayError.from_dict({"code": "timeout"})
    assert error.message == "timeout"
    assert error.param is None


def test_to_dict_has_openai_error_keys() -> None:
    error = InvalidModelError("unknown model 'x'", param="model")
    assert error.to_dict() == {
        "message": "unknown model 'x'",
        "type": "invalid_request_error",
        "code": "invalid_model",
        "param": "model",
    }
    assert str(error) == "unknown model 'x'"


@pytest.mark.parametrize(
    ("error", "openai_type"),
    [
        (UnauthorizedError("x"), "authentication_error"),
        (ForbiddenError("x"), "permission_error"),
        (NotFoundError("x"), "not_found_error"),
        (ConflictError("x"), "invalid_request_error"),
        (PayloadTooLargeError("x"), "invalid_request_error"),
        (ProviderError("x"), "api_error"),
        (ProviderTimeoutError("x"), "api_error"),
        (UnavailableError("x"), "api_error"),
        (GatewayError("x"), "api_error"),
    ],
)
def test_error_type_follows_http_status(error: GatewayError, openai_type: str) -> None:
    assert error.to_dict()["type"] == openai_type


@pytest.mark.parametrize(
    ("klass", "retryable"),
    [
        (ProviderTimeoutError, True),
        (ProviderUnavailableError, True),
        (ProviderRateLimitedError, True),
        (ProviderRejectedError, False),
        (ProviderBadResponseError, False),
        (ProviderError, False),
        (InvalidRequestError, False),
    ],
)
def test_retryable_is_a_class_attribute(klass: type, retryable: bool) -> None:
    assert klass.retryable is retryable
    assert klass("x").retryable is retryable


def test_provider_subclasses_keep_upstream_error_code() -> None:
    for klass in (
        ProviderRejectedError,
        ProviderBadResponseError,
        ProviderUnavailableError,
    ):
        assert (klass.code, klass.status) == ("upstream_error", 502)


def test_rate_limited_error_carries_retry_after() -> None:
    error = ProviderRateLimitedError("slow down", retry_after=1.5)
    assert error.retry_after == 1.5
    assert ProviderRateLimitedError("slow down").retry_after is None
