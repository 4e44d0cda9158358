"""Unit tests for common/completions.py (chunk folding) and common/tokens.py."""

from __future__ import annotations

from typing import Any

import pytest

from common.completions import (
    CompletionAccumulator,
    completion_id,
    usage_chunk,
    usage_object,
)
from common.tokens import (
    MESSAGE_OVERHEAD_TOKENS,
    estimate_prompt_tokens,
    estimate_text_tokens,
)

JOB_ID = "job_01HZXABCDEF"
CLIENT_MODEL = "demo-chat"
CREATED = 1_700_000_000


def upstream_chunk(
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A chunk as an OpenAI-compatible provider sends it."""
    return {
        "id": "chatcmpl-provider-internal-id",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "qwen-turbo-2024-11-01",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}],
        **extra,
    }


def usage_only(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-provider-internal-id",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "qwen-turbo-2024-11-01",
        "choices": [],
        "usage": usage_object(prompt, completion),
    }


def accumulator() -> CompletionAccumulator:
    return CompletionAccumulator(JOB_ID, CLIENT_MODEL, CREATED)


def text_stream() -> list[dict[str, Any]]:
    return [
        upstream_chunk({"role": "assistant", "content": ""}),
        upstream_chunk({"content": "Hello"}),
        upstream_chunk({"content": ", "}),
        upstream_chunk({"content": "世界"}),
        upstream_chunk({}, finish_reason="stop"),
    ]


# --- ids and helper shapes ---


@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        ("job_01HZXABCDEF", "chatcmpl-01HZXABCDEF"),
        ("job_abc", "chatcmpl-abc"),
        ("abc", "chatcmpl-abc"),
        ("job_job_x", "chatcmpl-job_x"),
    ],
)
def test_completion_id_drops_only_the_job_prefix(job_id: str, expected: str) -> None:
    assert completion_id(job_id) == expected


def test_usage_object_totals_tokens() -> None:
    assert usage_object(10, 5) == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
    }


def test_usage_chunk_has_no_choices_and_carries_usage() -> None:
    usage = usage_object(3, 4)
    assert usage_chunk(JOB_ID, CLIENT_MODEL, CREATED, usage) == {
        "id": "chatcmpl-01HZXABCDEF",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": CLIENT_MODEL,
        "choices": [],
        "usage": usage,
    }


# --- relabelling and content ---


def test_content_deltas_accumulate_into_message_content() -> None:
    acc = accumulator()
    for chunk in text_stream():
        acc.add(chunk)
    assert acc.text == "Hello, 世界"
    completion = acc.completion(acc.final_usage(10))
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello, 世界",
    }
    assert completion["choices"][0]["index"] == 0
    assert completion["choices"][0]["logprobs"] is None


def test_chunks_are_relabelled_with_job_id_and_client_model() -> None:
    acc = accumulator()
    relayed = [acc.add(chunk) for chunk in text_stream()]
    assert all(r is not None for r in relayed)
    for out, original in zip(relayed, text_stream(), strict=True):
        assert out["id"] == "chatcmpl-01HZXABCDEF"
        assert out["model"] == CLIENT_MODEL
        assert out["created"] == CREATED
        assert out["object"] == "chat.completion.chunk"
        assert out["choices"] == original["choices"]
        assert "usage" not in out
    assert acc.chunks == len(relayed)
    completion = acc.completion(acc.final_usage(0))
    assert (completion["id"], completion["model"], completion["created"]) == (
        "chatcmpl-01HZXABCDEF",
        CLIENT_MODEL,
        CREATED,
    )


def test_relayed_chunk_keeps_system_fingerprint() -> None:
    out = accumulator().add(
        upstream_chunk({"content": "x"}, system_fingerprint="fp_42")
    )
    assert out["system_fingerprint"] == "fp_42"
    assert "system_fingerprint" not in accumulator().add(
        upstream_chunk({"content": "x"})
    )


@pytest.mark.parametrize(
    "chunk",
    [
        usage_only(12, 3),
        {"choices": [], "usage": usage_object(12, 3)},
        {"usage": usage_object(12, 3)},
        {"choices": None, "usage": usage_object(12, 3)},
    ],
    ids=["openai", "bare", "no-choices-key", "null-choices"],
)
def test_usage_only_chunk_is_not_relayed_and_its_usage_is_final(
    chunk: dict[str, Any],
) -> None:
    acc = accumulator()
    for c in text_stream():
        acc.add(c)
    assert acc.add(chunk) is None
    assert acc.chunks == len(text_stream())
    assert acc.final_usage(999) == usage_object(12, 3)
    assert acc.completion(acc.final_usage(999))["usage"] == usage_object(12, 3)


def test_usage_on_a_chunk_with_choices_is_kept_and_the_chunk_relayed() -> None:
    acc = accumulator()
    out = acc.add(upstream_chunk({"content": "hi"}, "stop", usage=usage_object(7, 1)))
    assert out is not None and "usage" not in out
    assert acc.final_usage(999) == usage_object(7, 1)


def test_without_provider_usage_final_usage_is_estimated() -> None:
    acc = accumulator()
    for chunk in text_stream():
        acc.add(chunk)
    completion_tokens = estimate_text_tokens("Hello, 世界")
    assert acc.final_usage(25) == {
        "prompt_tokens": 25,
        "completion_tokens": completion_tokens,
        "total_tokens": 25 + completion_tokens,
    }


@pytest.mark.parametrize("usage", [{}, {"completion_tokens": 5}, None, "12 tokens"])
def test_usage_without_prompt_tokens_falls_back_to_an_estimate(usage: Any) -> None:
    acc = accumulator()
    acc.add(upstream_chunk({"content": "abcdefgh"}, "stop"))
    acc.add({"choices": [], "usage": usage})
    assert acc.final_usage(10) == usage_object(10, 2)


def test_empty_stream_gives_empty_completion_and_zero_estimate() -> None:
    acc = accumulator()
    assert acc.final_usage(4) == usage_object(4, 0)
    completion = acc.completion(acc.final_usage(4))
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": ""}
    assert completion["choices"][0]["finish_reason"] == "stop"


# --- finish reason ---


@pytest.mark.parametrize("reason", ["stop", "length", "tool_calls", "content_filter"])
def test_finish_reason_from_the_last_chunk_is_kept(reason: str) -> None:
    acc = accumulator()
    acc.add(upstream_chunk({"content": "a"}))
    acc.add(upstream_chunk({"content": "b"}, finish_reason=reason))
    acc.add(usage_only(1, 1))
    assert acc.finish_reason == reason
    assert acc.completion(acc.final_usage(1))["choices"][0]["finish_reason"] == reason


def test_null_finish_reason_after_a_real_one_does_not_erase_it() -> None:
    acc = accumulator()
    acc.add(upstream_chunk({"content": "a"}, finish_reason="length"))
    acc.add(upstream_chunk({}, finish_reason=None))
    assert acc.completion({})["choices"][0]["finish_reason"] == "length"


def test_explicit_finish_reason_overrides_the_streamed_one() -> None:
    acc = accumulator()
    acc.add(upstream_chunk({"content": "a"}, finish_reason="stop"))
    assert acc.completion({}, finish_reason="cancelled")["choices"][0][
        "finish_reason"
    ] == ("cancelled")


# --- tool calls ---


def tool_call_stream(first_delta: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        upstream_chunk(
            {
                **first_delta,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_abc",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ],
            }
        ),
        upstream_chunk(
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}
        ),
        upstream_chunk(
            {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "杭'}}]}
        ),
        upstream_chunk(
            {"tool_calls": [{"index": 0, "function": {"arguments": '州"}'}}]}
        ),
        upstream_chunk({}, finish_reason="tool_calls"),
    ]


@pytest.mark.parametrize(
    "first_delta",
    [
        {"role": "assistant", "content": None},
        {"role": "assistant"},
        {"role": "assistant", "content": ""},
    ],
    ids=["null-content", "no-content", "empty-string-content"],
)
def test_streamed_tool_call_folds_into_one_call_and_content_is_none(
    first_delta: dict[str, Any],
) -> None:
    acc = accumulator()
    for chunk in tool_call_stream(first_delta):
        acc.add(chunk)
    choice = acc.completion(acc.final_usage(10))["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [
        {
            "id": "call_abc",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "杭州"}'},
        }
    ]
    assert choice["message"]["content"] is None


def test_tool_call_arguments_count_towards_estimated_usage() -> None:
    acc = accumulator()
    for chunk in tool_call_stream({"role": "assistant"}):
        acc.add(chunk)
    assert acc.final_usage(0)["completion_tokens"] == estimate_text_tokens(
        '{"city": "杭州"}'
    )


def test_parallel_tool_calls_are_kept_apart_and_ordered_by_index() -> None:
    acc = accumulator()
    acc.add(
        upstream_chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "g"},
                    },
                ]
            }
        )
    )
    acc.add(
        upstream_chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "f"},
                    },
                ]
            }
        )
    )
    acc.add(
        upstream_chunk(
            {
                "tool_calls": [
                    {"index": 0, "function": {"arguments": "{}"}},
                    {"index": 1, "function": {"arguments": '{"x":1}'}},
                ]
            }
        )
    )
    calls = acc.completion({})["choices"][0]["message"]["tool_calls"]
    assert [
        (c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls
    ] == [
        ("call_a", "f", "{}"),
        ("call_b", "g", '{"x":1}'),
    ]


def test_text_and_tool_call_together_keep_the_text() -> None:
    acc = accumulator()
    acc.add(upstream_chunk({"role": "assistant", "content": "Let me check."}))
    for chunk in tool_call_stream({}):
        acc.add(chunk)
    message = acc.completion({})["choices"][0]["message"]
    assert message["content"] == "Let me check."
    assert len(message["tool_calls"]) == 1


# --- extra delta fields ---


def test_reasoning_content_accumulates_into_the_message() -> None:
    acc = accumulator()
    acc.add(upstream_chunk({"role": "assistant", "reasoning_content": ""}))
    acc.add(upstream_chunk({"reasoning_content": "First, "}))
    acc.add(upstream_chunk({"reasoning_content": "think."}))
    acc.add(upstream_chunk({"reasoning_content": None, "content": "Answer"}))
    acc.add(upstream_chunk({}, finish_reason="stop"))
    message = acc.completion({})["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": "Answer",
        "reasoning_content": "First, think.",
    }


def test_non_string_delta_fields_are_not_accumulated() -> None:
    acc = accumulator()
    acc.add(upstream_chunk({"content": "x", "audio": {"id": "a"}, "refusal": None}))
    message = acc.completion({})["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "x"}


def test_role_is_not_treated_as_an_extra_field() -> None:
    acc = accumulator()
    acc.add(upstream_chunk({"role": "assistant", "content": "x"}))
    acc.add(upstream_chunk({"role": "assistant", "content": "y"}))
    assert acc.completion({})["choices"][0]["message"] == {
        "role": "assistant",
        "content": "xy",
    }


# --- tokens ---


def test_empty_text_is_zero_tokens() -> None:
    assert estimate_text_tokens("") == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a", 1),
        ("abcd", 1),
        ("abcde", 2),
        ("hello world!", 3),
        ("你好", 2),
        ("通义千问超大规模语言模型", 12),
        ("你好 ab", 3),
        ("こんにちは", 5),
    ],
)
def test_text_token_estimate(text: str, expected: int) -> None:
    assert estimate_text_tokens(text) == expected


def test_chinese_text_is_about_one_token_per_character() -> None:
    text = "今天天气很好我们去公园散步吧" * 10
    assert estimate_text_tokens(text) == len(text)


def test_ascii_text_is_about_one_token_per_four_characters() -> None:
    assert estimate_text_tokens("x" * 400) == 100


def test_prompt_estimate_adds_per_message_overhead() -> None:
    messages = [
        {"role": "system", "content": "abcd"},
        {"role": "user", "content": "你好"},
    ]
    assert estimate_prompt_tokens(messages) == 2 * MESSAGE_OVERHEAD_TOKENS + 1 + 2
    assert estimate_prompt_tokens([]) == 0


@pytest.mark.parametrize(
    ("content", "text_tokens"),
    [
        (None, 0),
        ("", 0),
        (
            [
                {"type": "text", "text": "abcd"},
                {"type": "image_url", "image_url": {"url": "u"}},
            ],
            2,
        ),
        ([{"type": "text", "text": "你好"}, {"type": "text", "text": "世界"}], 5),
        ([], 0),
    ],
    ids=["null", "empty", "text-and-image", "two-text-parts", "no-parts"],
)
def test_prompt_estimate_reads_content_parts(content: Any, text_tokens: int) -> None:
    messages = [{"role": "user", "content": content}]
    assert estimate_prompt_tokens(messages) == MESSAGE_OVERHEAD_TOKENS + text_tokens


def test_message_without_content_costs_only_the_overhead() -> None:
    messages = [{"role": "assistant", "tool_calls": [{"id": "c"}]}]
    assert estimate_prompt_tokens(messages) == MESSAGE_OVERHEAD_TOKENS
