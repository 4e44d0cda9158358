"""A finished job's event log compacted for the database (common/jobs/compaction.py):
what happened is kept event by event, the deltas of the last run fold into one."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk

from common.jobs.compaction import Compacted, compact, whole_chunk
from common.jobs.events import Event
from common.jobs.model import EventType
from common.jsoncodec import dumps_bytes, loads

CREATED = 1764800000


def chunk(
    delta: dict[str, Any] | None = None,
    *,
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
    choices: list[dict[str, Any]] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` as an upstream streams it."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "upstream-model",
        "choices": (
            choices
            if choices is not None
            else [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}]
        ),
        "usage": usage,
        **top,
    }


def log(*entries: tuple[str, Any]) -> list[Event]:
    """An exact event log, ids from 1: ``(type, data)`` each, data as compact JSON."""
    return [
        Event(number, kind, dumps_bytes(data))
        for number, (kind, data) in enumerate(entries, start=1)
    ]


def status(name: str, **more: Any) -> tuple[str, Any]:
    return EventType.STATUS, {"status": name, **more}


def delta(data: dict[str, Any]) -> tuple[str, Any]:
    return EventType.DELTA, data


def done() -> tuple[str, Any]:
    return EventType.DONE, {"id": "job_1", "object": "job", "status": "succeeded"}


def deltas_of(compacted: list[Compacted]) -> list[Compacted]:
    return [event for event in compacted if event[1] == EventType.DELTA]


def the_delta(compacted: list[Compacted]) -> tuple[int, dict[str, Any]]:
    found = deltas_of(compacted)
    assert len(found) == 1, found
    number, _, data = found[0]
    assert isinstance(data, dict)
    return number, data


USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
ERROR = {"error": {"code": "upstream_error", "message": "the upstream failed"}}


def test_status_and_error_events_are_kept_and_done_keeps_only_its_id() -> None:
    events = log(
        status("queued"),
        status("running", attempt=1),
        delta(chunk({"role": "assistant", "content": ""})),
        delta(chunk({"content": "Hi"})),
        (EventType.ERROR, ERROR),
        status("failed"),
        done(),
    )
    compacted = compact(events)
    whole = whole_chunk(
        [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"})]
    )
    assert compacted == [
        (1, "status", {"status": "queued"}),
        (2, "status", {"status": "running", "attempt": 1}),
        (4, "delta", whole),
        (5, "error", ERROR),
        (6, "status", {"status": "failed"}),
        (7, "done", None),
    ]
    assert [number for number, _, _ in compacted] == sorted(
        number for number, _, _ in compacted
    )


def test_the_deltas_fold_into_one_chunk_under_the_last_deltas_id() -> None:
    first = chunk(
        {"role": "assistant", "content": ""},
        id="chatcmpl-first",
        created=CREATED,
        model="model-first",
        system_fingerprint="fp_1",
    )
    events = log(
        status("queued"),
        status("running"),
        delta(first),
        delta(chunk({"content": "Hel"}, id="chatcmpl-2", created=CREATED + 1)),
        delta(chunk({"role": "other", "content": "lo, "}, model="model-later")),
        delta(chunk({"content": "wörld 🙂"}, usage={"total_tokens": 1})),
        delta(chunk({}, finish_reason="length")),
        delta(chunk({"content": None}, finish_reason="stop")),
        delta(chunk(usage=USAGE, choices=[])),  # stream_options.include_usage
        delta(chunk({}, usage=None)),  # an explicit null after it changes nothing
        status("succeeded"),
        done(),
    )
    compacted = compact(events)
    number, whole = the_delta(compacted)
    assert number == 10, "the folded delta takes the id of the last delta"
    assert whole == {
        "id": "chatcmpl-first",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "model-first",
        "system_fingerprint": "fp_1",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "Hello, wörld 🙂"},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
    assert [(n, kind) for n, kind, _ in compacted] == [
        (1, "status"),
        (2, "status"),
        (10, "delta"),
        (11, "status"),
        (12, "done"),
    ]


def test_a_reset_drops_the_earlier_runs_deltas_and_keeps_the_statuses() -> None:
    events = log(
        status("queued"),
        status("running"),
        delta(chunk({"role": "assistant", "content": "the first "})),
        delta(chunk({"content": "run's text"})),
        status("queued", reset=True),
        status("running"),
        delta(chunk({"role": "assistant", "content": "the second"})),
        delta(chunk({"content": " run"}, finish_reason="stop")),
        status("succeeded"),
        done(),
    )
    compacted = compact(events)
    assert [(n, kind) for n, kind, _ in compacted] == [
        (1, "status"),
        (2, "status"),
        (5, "status"),
        (6, "status"),
        (8, "delta"),
        (9, "status"),
        (10, "done"),
    ]
    assert compacted[2] == (5, "status", {"status": "queued", "reset": True})
    _, whole = the_delta(compacted)
    assert whole["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": "the second run"},
            "finish_reason": "stop",
        }
    ]


def test_a_reset_after_the_last_delta_leaves_no_delta() -> None:
    events = log(
        status("queued"),
        status("running"),
        delta(chunk({"role": "assistant", "content": "withdrawn"})),
        status("queued", reset=True),
        status("cancelled"),
        done(),
    )
    compacted = compact(events)
    assert deltas_of(compacted) == []
    assert [n for n, _, _ in compacted] == [1, 2, 4, 5, 6]


def test_reasoning_content_and_refusal_concatenate() -> None:
    chunks = [
        chunk({"role": "assistant", "reasoning_content": "Think"}),
        chunk({"reasoning_content": "ing…", "content": None}),
        chunk({"content": "Ans"}),
        chunk({"content": "wer", "reasoning_content": None}),
        chunk({"refusal": "No"}),
        chunk({"refusal": "pe"}, finish_reason="stop"),
    ]
    compacted = compact(log(status("running"), *map(delta, chunks), done()))
    _, whole = the_delta(compacted)
    assert whole["choices"][0]["delta"] == {
        "role": "assistant",
        "reasoning_content": "Thinking…",
        "content": "Answer",
        "refusal": "Nope",
    }


def _call(index: int, **fields: Any) -> dict[str, Any]:
    return {"index": index, **fields}


def test_tool_calls_merge_by_index_and_interleaved_calls_stay_apart() -> None:
    chunks = [
        chunk(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    _call(
                        0,
                        id="call_a",
                        type="function",
                        function={"name": "get_weather", "arguments": ""},
                    )
                ],
            }
        ),
        chunk(
            {
                "tool_calls": [
                    _call(
                        1,
                        id="call_b",
                        type="function",
                        function={"name": "get_time", "arguments": '{"tz"'},
                    )
                ]
            }
        ),
        chunk({"tool_calls": [_call(0, function={"arguments": '{"city":'})]}),
        chunk(
            {
                "tool_calls": [
                    _call(
                        1,
                        id=None,
                        type=None,
                        function={"name": None, "arguments": ':"UTC"}'},
                    )
                ]
            }
        ),
        chunk({"tool_calls": [_call(0, function={"arguments": '"Paris"}'})]}),
        chunk({}, finish_reason="tool_calls"),
    ]
    compacted = compact(log(status("running"), *map(delta, chunks), done()))
    number, whole = the_delta(compacted)
    assert number == 7
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["delta"] == {
        "role": "assistant",
        "tool_calls": [
            {
                "index": 0,
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "index": 1,
                "id": "call_b",
                "type": "function",
                "function": {"name": "get_time", "arguments": '{"tz":"UTC"}'},
            },
        ],
    }


def test_choices_fold_apart_by_index() -> None:
    def two(a: str, b: str, finish: str | None = None) -> dict[str, Any]:
        return chunk(
            choices=[
                {"index": 1, "delta": {"content": b}, "finish_reason": finish},
                {"index": 0, "delta": {"content": a}, "finish_reason": finish},
            ]
        )

    whole = whole_chunk([two("a", "x"), two("b", "y"), two("c", "z", "stop")])
    assert whole["choices"] == [
        {"index": 0, "delta": {"content": "abc"}, "finish_reason": "stop"},
        {"index": 1, "delta": {"content": "xyz"}, "finish_reason": "stop"},
    ]


def test_logprobs_content_lists_are_joined() -> None:
    def token(text: str) -> dict[str, Any]:
        return {
            "token": text,
            "logprob": -0.5,
            "bytes": list(text.encode()),
            "top_logprobs": [],
        }

    def with_logprobs(text: str) -> dict[str, Any]:
        return chunk(
            choices=[
                {
                    "index": 0,
                    "delta": {"content": text},
                    "finish_reason": None,
                    "logprobs": {"content": [token(text)], "refusal": None},
                }
            ]
        )

    whole = whole_chunk([with_logprobs("a"), with_logprobs("b")])
    assert whole["choices"][0]["logprobs"]["content"] == [token("a"), token("b")]
    ChatCompletionChunk.model_validate(whole)


def test_a_job_without_deltas_has_no_delta_event() -> None:
    """A job cancelled while queued: statuses and done only."""
    events = log(status("queued"), status("cancelled"), done())
    assert compact(events) == [
        (1, "status", {"status": "queued"}),
        (2, "status", {"status": "cancelled"}),
        (3, "done", None),
    ]
    failed = log(status("queued"), (EventType.ERROR, ERROR), status("failed"), done())
    assert deltas_of(compact(failed)) == []


#: Any text, lone surrogates included (they reach the log as JSON escapes; an
#: upstream may split a pair across chunks). ``st.text()`` alone never has them.
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
TEXT = st.lists(st.one_of(st.text(), SURROGATE), max_size=4).map("".join)


@given(
    pieces=st.lists(TEXT, min_size=1, max_size=20),
    role_first=st.booleans(),
    finish_last=st.booleans(),
)
def test_folded_content_is_the_pieces_joined(
    pieces: list[str], role_first: bool, finish_last: bool
) -> None:
    chunks = [chunk({"content": piece}) for piece in pieces]
    if role_first:
        chunks.insert(0, chunk({"role": "assistant"}))
    if finish_last:
        chunks.append(chunk({}, finish_reason="stop"))
    events = log(status("running"), *map(delta, chunks), status("succeeded"), done())
    number, whole = the_delta(compact(events))
    assert number == len(chunks) + 1
    # Each piece as the chunk's JSON carries it: a surrogate pair within one piece
    # is one character to any JSON reader; a pair split across chunks stays split.
    carried = [loads(dumps_bytes(piece)) for piece in pieces]
    assert whole["choices"][0]["delta"]["content"] == "".join(carried)


def test_the_openai_sdk_parses_the_folded_chunk() -> None:
    text = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": " there"}, finish_reason="stop"),
        chunk(usage=USAGE, choices=[]),
    ]
    parsed = ChatCompletionChunk.model_validate(whole_chunk(text))
    assert parsed.id == "chatcmpl-1" and parsed.object == "chat.completion.chunk"
    assert parsed.choices[0].delta.content == "Hello there"
    assert parsed.choices[0].delta.role == "assistant"
    assert parsed.choices[0].finish_reason == "stop"
    assert parsed.usage is not None and parsed.usage.total_tokens == 8

    tools = [
        chunk(
            {
                "role": "assistant",
                "tool_calls": [
                    _call(
                        0,
                        id="call_a",
                        type="function",
                        function={"name": "f", "arguments": ""},
                    )
                ],
            }
        ),
        chunk({"tool_calls": [_call(0, function={"arguments": "{}"})]}),
        chunk({"reasoning_content": "hmm"}, finish_reason="tool_calls"),
    ]
    parsed = ChatCompletionChunk.model_validate(whole_chunk(tools))
    calls = parsed.choices[0].delta.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].id == "call_a" and calls[0].function is not None
    assert calls[0].function.name == "f" and calls[0].function.arguments == "{}"
    assert parsed.choices[0].finish_reason == "tool_calls"
