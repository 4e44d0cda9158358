"""Unit tests for the incremental SSE parser in common/providers/sse.py."""

from __future__ import annotations

import json

import pytest

from common.providers.sse import SSEEvent, SSEParser, iter_sse


def feed_all(chunks: list[bytes]) -> list[SSEEvent]:
    """Feed every chunk to one parser, then close it; return all events."""
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.close())
    return events


def byte_by_byte(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


@pytest.mark.parametrize(
    "newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "lone-cr"]
)
def test_every_line_ending_style_separates_lines_and_events(newline: bytes) -> None:
    stream = b"data: one" + newline + newline + b"data: two" + newline + newline
    assert list(iter_sse([stream])) == [SSEEvent("one"), SSEEvent("two")]


@pytest.mark.parametrize(
    "newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "lone-cr"]
)
def test_multi_line_data_is_joined_with_newline_for_every_line_ending(
    newline: bytes,
) -> None:
    stream = (
        b"data: a" + newline + b"data: b" + newline + b"data: c" + newline + newline
    )
    assert list(iter_sse([stream])) == [SSEEvent("a\nb\nc")]


def test_lf_event_is_dispatched_by_feed_without_waiting_for_close() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: hello\n\n") == [SSEEvent("hello")]
    assert parser.close() == []


def test_lone_cr_event_is_dispatched_once_the_next_byte_arrives() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: one\r\r") == []  # a trailing CR may still become CRLF
    assert parser.feed(b"data: two\r\r") == [SSEEvent("one")]
    assert parser.close() == [SSEEvent("two")]


def test_crlf_split_across_two_feeds_is_one_line_end() -> None:
    parser = SSEParser()
    events = parser.feed(b"data: a\r")
    events += parser.feed(b"\ndata: b\r")
    events += parser.feed(b"\n\r")
    events += parser.feed(b"\n")
    events += parser.close()
    # Had the split CRLF counted as two line ends, "a" would be its own event.
    assert events == [SSEEvent("a\nb")]


def test_crlf_split_between_event_lines_does_not_add_a_blank_line() -> None:
    chunks = [b"event: first\r", b"\ndata: x\r", b"\n\r", b"\nevent: second\r", b"\n"]
    chunks += [b"data: y\r\n\r\n"]
    assert feed_all(chunks) == [
        SSEEvent("x", event="first"),
        SSEEvent("y", event="second"),
    ]


@pytest.mark.parametrize(
    "comment", [b": keepalive", b":", b":ping 12345"], ids=["keepalive", "bare", "ping"]
)
def test_comment_lines_are_ignored(comment: bytes) -> None:
    stream = (
        comment
        + b"\n\n"
        + b"data: a\n"
        + comment
        + b"\ndata: b\n\n"
        + comment
        + b"\n\n"
    )
    assert list(iter_sse([stream])) == [SSEEvent("a\nb")]


def test_only_comments_produce_no_events() -> None:
    assert list(iter_sse([b": keepalive\n\n: keepalive\n\n"])) == []


@pytest.mark.parametrize(
    ("line", "data"),
    [
        (b"data: hello", "hello"),
        (b"data:hello", "hello"),
        (b"data:  two spaces", " two spaces"),
        (b'data: {"a": 1}', '{"a": 1}'),
        (b"data: a:b:c", "a:b:c"),
    ],
    ids=["space", "no-space", "only-first-space-dropped", "json", "colons-in-value"],
)
def test_data_value_drops_at_most_one_space_after_the_colon(
    line: bytes, data: str
) -> None:
    assert list(iter_sse([line + b"\n\n"])) == [SSEEvent(data)]


def test_event_and_id_fields_are_reported_with_the_event() -> None:
    stream = b"event: message\nid: 42\ndata: hi\n\n"
    assert list(iter_sse([stream])) == [SSEEvent("hi", event="message", id="42")]


def test_event_type_resets_after_dispatch_but_id_persists() -> None:
    stream = b"event: delta\nid: 7\ndata: one\n\ndata: two\n\n"
    assert list(iter_sse([stream])) == [
        SSEEvent("one", event="delta", id="7"),
        SSEEvent("two", event=None, id="7"),
    ]


def test_unknown_fields_are_ignored() -> None:
    stream = b"retry: 1000\nfoo: bar\ndata: x\n\n"
    assert list(iter_sse([stream])) == [SSEEvent("x")]


def test_done_sentinel_is_delivered_as_ordinary_data() -> None:
    stream = b'data: {"x": 1}\n\ndata: [DONE]\n\n'
    assert list(iter_sse([stream])) == [SSEEvent('{"x": 1}'), SSEEvent("[DONE]")]


@pytest.mark.parametrize(
    "split_at", [1, 2], ids=["after-first-byte", "after-second-byte"]
)
def test_utf8_character_split_across_chunks_decodes_correctly(split_at: int) -> None:
    stream = "data: 你好,世界\n\n".encode()
    cut = stream.index("你".encode()) + split_at
    events = feed_all([stream[:cut], stream[cut:]])
    assert events == [SSEEvent("你好,世界")]


def test_utf8_text_fed_byte_by_byte_decodes_correctly() -> None:
    stream = "data: 通义千问 🚀\n\n".encode()
    assert feed_all(byte_by_byte(stream)) == [SSEEvent("通义千问 🚀")]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"\xef\xbb\xbfdata: x\n\n"],
        [b"\xef\xbb\xbf", b"data: x\n\n"],
        [b"\xef", b"\xbb", b"\xbf", b"data: x\n\n"],
        byte_by_byte(b"\xef\xbb\xbfdata: x\n\n"),
    ],
    ids=["whole", "bom-alone", "bom-split", "byte-by-byte"],
)
def test_bom_at_stream_start_is_dropped(chunks: list[bytes]) -> None:
    assert feed_all(chunks) == [SSEEvent("x")]


def test_close_flushes_an_event_without_trailing_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: tail\n") == []
    assert parser.close() == [SSEEvent("tail")]


def test_close_flushes_an_event_without_any_trailing_newline() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: end\ndata: tail") == []
    assert parser.close() == [SSEEvent("tail", event="end")]


@pytest.mark.parametrize(
    "stream",
    [
        b"data: a\n\ndata: tail",
        b"data: a\n\ndata: tail\n",
        b"data: a\r\n\r\ndata: tail\r",
    ],
    ids=["no-newline", "one-newline", "trailing-cr"],
)
def test_iter_sse_flushes_the_last_unterminated_event(stream: bytes) -> None:
    assert list(iter_sse([stream])) == [SSEEvent("a"), SSEEvent("tail")]


def test_close_on_an_idle_parser_returns_nothing() -> None:
    parser = SSEParser()
    assert parser.close() == []
    parser = SSEParser()
    parser.feed(b"data: a\n\n")
    assert parser.close() == []


def test_iter_sse_accepts_a_generator_of_chunks() -> None:
    def chunks():
        yield b"data: "
        yield b"one\n"
        yield b"\ndata: two\n\n"

    assert list(iter_sse(chunks())) == [SSEEvent("one"), SSEEvent("two")]


def _openai_stream(newline: bytes) -> bytes:
    base = {
        "id": "chatcmpl-abc123",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_1234",
    }
    pieces = [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "finish_reason": None,
        },
        {"index": 0, "delta": {"content": "Hello"}, "finish_reason": None},
        {"index": 0, "delta": {"content": ", 世界"}, "finish_reason": None},
        {"index": 0, "delta": {"content": "!\nBye."}, "finish_reason": None},
        {"index": 0, "delta": {}, "finish_reason": "stop"},
    ]
    lines = [json.dumps({**base, "choices": [p]}, ensure_ascii=False) for p in pieces]
    usage = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
    lines.append(json.dumps({**base, "choices": [], "usage": usage}))
    lines.append("[DONE]")
    out = b": OPENROUTER PROCESSING" + newline + newline
    for line in lines:
        out += b"data: " + line.encode() + newline + newline
    return out


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_byte_by_byte_openai_stream_matches_whole_feed(newline: bytes) -> None:
    stream = _openai_stream(newline)
    whole = feed_all([stream])
    assert feed_all(byte_by_byte(stream)) == whole
    assert list(iter_sse(byte_by_byte(stream))) == whole

    assert len(whole) == 7
    assert whole[-1] == SSEEvent("[DONE]")
    chunks = [json.loads(e.data) for e in whole[:-1]]
    assert "".join(
        c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]
    ) == ("Hello, 世界!\nBye.")
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 14


@pytest.mark.parametrize("size", [2, 3, 5, 7, 64])
def test_fixed_size_chunking_matches_whole_feed(size: int) -> None:
    stream = _openai_stream(b"\r\n")
    chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
    assert feed_all(chunks) == feed_all([stream])


def test_sse_event_defaults_and_is_immutable() -> None:
    event = SSEEvent("x")
    assert (event.data, event.event, event.id) == ("x", None, None)
    with pytest.raises(AttributeError):
        event.data = "y"  # type: ignore[misc]
