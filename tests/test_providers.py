"""Tests for common/providers: the openai kind over real HTTP, and the simulated one."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import requests

from common.catalog import ModelConfig, ProviderConfig, SimulatedSpeed, Timeouts
from common.completions import CompletionAccumulator
from common.errors import (
    ProviderError,
    ProviderRateLimitedError,
    ProviderRejectedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from common.execution.cancel import CancelToken
from common.providers.openai_compat import OpenAICompatProvider
from common.providers.simulated import SimulatedProvider
from common.tokens import estimate_prompt_tokens
from tests.conftest import free_port, wait_until

API_KEY = "sk-test"
MESSAGES = [{"role": "user", "content": "hi"}]
MODEL = ModelConfig(id="m", provider="fake", upstream_model="up-model")
TIMEOUTS = Timeouts(connect=2, first_token=1.5, idle=1.5, total=30)
FIVE_TOKENS = [f"tok{i} " for i in range(5)]


def timeouts(first_token: float, idle: float, total: float) -> Timeouts:
    return Timeouts(connect=2, first_token=first_token, idle=idle, total=total)


def openai_provider(
    base_url: str, api_key: str | None = API_KEY, timeouts: Timeouts = TIMEOUTS
) -> OpenAICompatProvider:
    """An ``openai``-kind provider pointed at ``base_url`` (the upstream's /v1)."""
    config = ProviderConfig(
        name="fake",
        kind="openai",
        base_url=base_url,
        api_key=api_key,
        timeouts=timeouts,
    )
    return OpenAICompatProvider(config)


def simulated_provider(
    first_token_delay: float = 0.05,
    tokens_per_second: float = 200,
    reply_tokens: int = 10,
) -> SimulatedProvider:
    speed = SimulatedSpeed(
        first_token_delay=first_token_delay,
        tokens_per_second=tokens_per_second,
        reply_tokens=reply_tokens,
    )
    config = ProviderConfig(name="sim", kind="simulated", simulated=speed)
    return SimulatedProvider(config)


def new_tag() -> str:
    return f"prov-{uuid.uuid4().hex}"


def chat(messages: list[dict[str, Any]] | None = None, **fake: Any) -> dict[str, Any]:
    """A body as llmq would send it, with the fake upstream's ``fake`` directives."""
    body: dict[str, Any] = {"messages": messages or MESSAGES}
    if fake:
        body["fake"] = fake
    return body


def collect(
    provider: Any, body: dict[str, Any], cancel: CancelToken | None = None
) -> list[dict[str, Any]]:
    return list(provider.stream(MODEL, body, cancel or CancelToken()))


def contents(chunks: list[dict[str, Any]]) -> list[str]:
    """Every non-empty ``delta.content``, in order."""
    return [
        choice["delta"]["content"]
        for chunk in chunks
        for choice in chunk.get("choices") or []
        if (choice.get("delta") or {}).get("content")
    ]


def finish_reasons(chunks: list[dict[str, Any]]) -> list[str]:
    return [
        choice["finish_reason"]
        for chunk in chunks
        for choice in chunk.get("choices") or []
        if choice.get("finish_reason")
    ]


def usage_chunks(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in chunks if c.get("choices") == [] and "usage" in c]


def accumulate(chunks: list[dict[str, Any]]) -> CompletionAccumulator:
    acc = CompletionAccumulator("job_test", "m", 0)
    for chunk in chunks:
        acc.add(chunk)
    return acc


def seen_request(upstream: str, tag: str) -> dict[str, Any]:
    """The last body the upstream got with ``tag``, plus its ``_authorization``."""
    resp = requests.get(f"{upstream}/_requests/{tag}", timeout=5)
    resp.raise_for_status()
    return dict(resp.json())


@pytest.fixture
def provider(upstream: str) -> OpenAICompatProvider:
    return openai_provider(f"{upstream}/v1")


# --- OpenAICompatProvider: a normal stream --------------------------------------------


def test_normal_stream_yields_tokens_in_order_then_stop_then_usage_only_chunk(
    provider: OpenAICompatProvider,
) -> None:
    chunks = collect(provider, chat(tokens=5))

    assert contents(chunks) == FIVE_TOKENS
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1] == {
        "choices": [],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
    }
    finish_index = next(i for i, c in enumerate(chunks) if finish_reasons([c]))
    assert finish_index == len(chunks) - 2
    assert all(c.get("object") == "chat.completion.chunk" for c in chunks[:-1])


def test_request_names_upstream_model_asks_for_stream_with_usage_and_sends_bearer_key(
    provider: OpenAICompatProvider, upstream: str
) -> None:
    """And asks for the body as it is: nothing here decompresses one."""
    tag = new_tag()
    body = chat(tag=tag)
    body["stream_options"] = {"extra": 1}
    collect(provider, body)

    seen = seen_request(upstream, tag)
    assert seen["model"] == "up-model"
    assert seen["stream"] is True
    assert seen["stream_options"] == {"extra": 1, "include_usage": True}
    assert seen["messages"] == MESSAGES
    assert seen["_authorization"] == f"Bearer {API_KEY}"
    assert seen["_accept_encoding"] == "identity"


def test_request_does_not_mutate_the_callers_body(
    provider: OpenAICompatProvider,
) -> None:
    body = chat(tokens=2)
    before = {**body, "fake": dict(body["fake"])}
    collect(provider, body)
    assert body == before


def test_provider_without_api_key_sends_no_authorization_header(upstream: str) -> None:
    tag = new_tag()
    chunks = collect(openai_provider(f"{upstream}/v1", api_key=None), chat(tag=tag))

    assert contents(chunks) == FIVE_TOKENS
    assert seen_request(upstream, tag)["_authorization"] is None


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"crlf": True},
        {"comments": True},
        {"split_data": True},
        {"crlf": True, "comments": True, "split_data": True},
    ],
    ids=["plain", "crlf", "comments", "split_data", "all-at-once"],
)
def test_sse_format_variants_all_yield_the_same_text_finish_and_usage(
    provider: OpenAICompatProvider, variant: dict[str, Any]
) -> None:
    chunks = collect(provider, chat(tokens=5, **variant))

    assert contents(chunks) == FIVE_TOKENS
    assert finish_reasons(chunks) == ["stop"]
    assert [c["usage"]["completion_tokens"] for c in usage_chunks(chunks)] == [5]


def test_stream_without_upstream_usage_yields_no_usage_chunk_and_accumulator_estimates(
    provider: OpenAICompatProvider,
) -> None:
    chunks = collect(provider, chat(tokens=5, usage=False))

    assert contents(chunks) == FIVE_TOKENS
    assert finish_reasons(chunks) == ["stop"]
    assert usage_chunks(chunks) == []
    assert not any("usage" in c for c in chunks)

    prompt_estimate = estimate_prompt_tokens(MESSAGES)
    usage = accumulate(chunks).final_usage(prompt_estimate)
    assert usage["prompt_tokens"] == prompt_estimate
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == prompt_estimate + usage["completion_tokens"]


def test_json_completion_despite_stream_becomes_one_full_chunk_then_usage(
    provider: OpenAICompatProvider,
) -> None:
    chunks = collect(provider, chat(tokens=4, json=True))

    assert len(chunks) == 2
    (choice,) = chunks[0]["choices"]
    assert choice["delta"]["content"] == "tok0 tok1 tok2 tok3 "
    assert choice["delta"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    assert chunks[1] == {
        "choices": [],
        "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11},
    }


def test_streamed_tool_call_folds_into_one_get_weather_call_with_paris_arguments(
    provider: OpenAICompatProvider,
) -> None:
    chunks = collect(provider, chat(tool_call=True))

    deltas = [ch["delta"] for c in chunks for ch in c.get("choices") or []]
    assert sum(1 for d in deltas if d.get("tool_calls")) > 1  # streamed in pieces
    acc = accumulate(chunks)
    assert list(acc.tool_calls) == [0]
    call = acc.tool_calls[0]
    assert call["id"] == "call_1"
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert acc.finish_reason == "tool_calls"
    assert acc.text == ""


# --- OpenAICompatProvider: errors -----------------------------------------------------


def test_upstream_429_is_rate_limited_with_retry_after(
    provider: OpenAICompatProvider,
) -> None:
    with pytest.raises(ProviderRateLimitedError) as info:
        collect(provider, chat(status=429))

    assert info.value.retry_after == 1.0
    assert info.value.retryable is True
    assert info.value.status == 502
    assert "fake failure 429" in info.value.message


@pytest.mark.parametrize("status", [500, 503])
def test_upstream_5xx_is_unavailable_and_retryable(
    provider: OpenAICompatProvider, status: int
) -> None:
    with pytest.raises(ProviderUnavailableError) as info:
        collect(provider, chat(status=status))

    assert info.value.retryable is True
    assert str(status) in info.value.message


def test_upstream_400_is_rejected_not_retryable_with_status_502(
    provider: OpenAICompatProvider,
) -> None:
    with pytest.raises(ProviderRejectedError) as info:
        collect(provider, chat(status=400))

    assert info.value.retryable is False
    assert info.value.status == 502
    assert info.value.code == "upstream_error"
    assert "fake failure 400" in info.value.message


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_auth_failure_is_rejected_and_never_quotes_the_key(
    provider: OpenAICompatProvider, status: int
) -> None:
    with pytest.raises(ProviderRejectedError) as info:
        collect(provider, chat(status=status))

    assert info.value.retryable is False
    assert API_KEY not in info.value.message
    assert API_KEY not in str(info.value)
    assert API_KEY not in repr(info.value.to_dict())


def test_upstream_that_hangs_past_first_token_timeout_raises_timeout_quickly(
    provider: OpenAICompatProvider,
) -> None:
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError) as info:
        collect(provider, chat(hang=4))
    elapsed = time.monotonic() - started

    assert info.value.code == "timeout"
    assert info.value.status == 504
    assert info.value.retryable is True
    assert elapsed < 3.0


def test_model_timeouts_override_the_providers(upstream: str) -> None:
    slow_provider = openai_provider(
        f"{upstream}/v1", timeouts=timeouts(first_token=30, idle=30, total=60)
    )
    impatient = MODEL.model_copy(
        update={"timeouts": timeouts(first_token=0.5, idle=0.5, total=60)}
    )
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError):
        list(slow_provider.stream(impatient, chat(hang=2), CancelToken()))

    assert time.monotonic() - started < 1.5


def test_stream_longer_than_total_timeout_raises_timeout(upstream: str) -> None:
    short = openai_provider(
        f"{upstream}/v1", timeouts=timeouts(first_token=2, idle=2, total=0.5)
    )
    received: list[dict[str, Any]] = []
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError, match="total"):
        stream = short.stream(MODEL, chat(tokens=50, delay=0.1), CancelToken())
        for chunk in stream:
            received.append(chunk)

    assert 0 < len(received) < 20
    assert time.monotonic() - started < 1.5


def test_gap_between_tokens_longer_than_idle_timeout_raises_timeout(
    upstream: str,
) -> None:
    # API.md section 9: "Timeouts: connect, first token, idle between tokens, total".
    # Patient first token (3 s), impatient idle (0.5 s), 1.2 s between tokens.
    impatient_idle = openai_provider(
        f"{upstream}/v1", timeouts=timeouts(first_token=3, idle=0.5, total=30)
    )
    received: list[dict[str, Any]] = []
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError):
        stream = impatient_idle.stream(MODEL, chat(tokens=3, delay=1.2), CancelToken())
        for chunk in stream:
            received.append(chunk)

    assert contents(received) == ["tok0 "]
    assert time.monotonic() - started < 1.1


def test_gap_between_tokens_within_idle_timeout_is_not_a_first_token_timeout(
    upstream: str,
) -> None:
    # Headers and the first token arrive at once; later gaps (0.8 s) exceed the
    # first-token timeout (0.4 s) but are well within the idle timeout (3 s).
    patient_idle = openai_provider(
        f"{upstream}/v1", timeouts=timeouts(first_token=0.4, idle=3, total=30)
    )
    chunks = collect(patient_idle, chat(tokens=2, delay=0.8))

    assert contents(chunks) == ["tok0 ", "tok1 "]


def test_connection_cut_mid_stream_yields_earlier_tokens_then_raises_unavailable(
    provider: OpenAICompatProvider,
) -> None:
    received: list[dict[str, Any]] = []
    with pytest.raises(ProviderUnavailableError):
        stream = provider.stream(MODEL, chat(tokens=5, cut_after=2), CancelToken())
        for chunk in stream:
            received.append(chunk)

    assert contents(received) == ["tok0 ", "tok1 "]
    assert len(received) == 2


def test_in_stream_error_chunk_raises_provider_error_mentioning_boom(
    provider: OpenAICompatProvider,
) -> None:
    received: list[dict[str, Any]] = []
    with pytest.raises(ProviderError, match="boom") as info:
        stream = provider.stream(MODEL, chat(tokens=5, error_after=2), CancelToken())
        for chunk in stream:
            received.append(chunk)

    assert contents(received) == ["tok0 ", "tok1 "]
    assert API_KEY not in info.value.message


def test_a_stream_without_chunked_encoding_is_relayed_as_it_arrives() -> None:
    """An upstream that ends its SSE body by closing (no Transfer-Encoding)."""
    listener = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Connection: close\r\n\r\n"
            )
            first = {"choices": [{"index": 0, "delta": {"content": "a"}}]}
            conn.sendall(f"data: {json.dumps(first)}\n\n".encode())
            release.wait(5)
            last = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            conn.sendall(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    chunks = openai_provider(f"http://127.0.0.1:{port}/v1").stream(
        MODEL, {"messages": MESSAGES}, CancelToken()
    )
    first = next(chunks)  # arrives while the upstream still holds the rest back
    release.set()
    rest = list(chunks)
    listener.close()
    assert first["choices"][0]["delta"] == {"content": "a"}
    assert rest[-1]["choices"][0]["finish_reason"] == "stop"


def _one_answer_server(
    request_lines: list[bytes], tls: ssl.SSLContext | None = None
) -> int:
    """A loopback server that answers one request with a JSON completion."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        if tls is not None:
            try:
                conn = tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                return  # the client refused the certificate
        with conn, listener:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            request_lines.append(request.split(b"\r\n", 1)[0])
            reply = {"choices": [{"index": 0, "message": {"content": "a"}}]}
            body = json.dumps(reply).encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )

    threading.Thread(target=serve, daemon=True).start()
    return int(listener.getsockname()[1])


def test_the_request_line_is_the_path_direct_and_the_whole_url_through_a_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    lines: list[bytes] = []
    direct = openai_provider(f"http://127.0.0.1:{_one_answer_server(lines)}/v1")
    assert contents(collect(direct, chat())) == ["a"]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_one_answer_server(lines)}")
    # Never resolved: the proxy (on loopback) is asked for it.
    proxied = openai_provider("http://provider.invalid/v1")
    assert contents(collect(proxied, chat())) == ["a"]
    assert lines == [
        b"POST /v1/chat/completions HTTP/1.1",
        b"POST http://provider.invalid/v1/chat/completions HTTP/1.1",
    ]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, and its key."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost"],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_an_https_provider_is_verified_against_the_systems_trust(
    monkeypatch: pytest.MonkeyPatch, certificate: tuple[Path, Path]
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    cert, key = certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    stranger = openai_provider(f"https://localhost:{_one_answer_server([], tls)}/v1")
    with pytest.raises(ProviderUnavailableError) as info:
        collect(stranger, chat())
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    # The OS's trust, as OpenSSL reads it (here: SSL_CERT_FILE), is honoured.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    lines: list[bytes] = []
    trusted = openai_provider(f"https://localhost:{_one_answer_server(lines, tls)}/v1")
    assert contents(collect(trusted, chat())) == ["a"]
    assert lines == [b"POST /v1/chat/completions HTTP/1.1"]


def test_unreachable_base_url_is_unavailable() -> None:
    dead = openai_provider(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(ProviderUnavailableError) as info:
        collect(dead, chat())

    assert info.value.retryable is True


# --- OpenAICompatProvider: cancellation -----------------------------------------------


def test_cancel_from_another_greenlet_stops_a_blocked_stream_within_a_second(
    provider: OpenAICompatProvider, upstream: str
) -> None:
    """As the worker's cancel listener does (a greenlet, under monkey-patching)."""
    tag = new_tag()
    token = CancelToken()
    cancelled_at: list[float] = []

    def cancel() -> None:
        cancelled_at.append(time.monotonic())
        token.cancel()

    stream: Iterator[dict[str, Any]] = provider.stream(
        MODEL, chat(tokens=200, delay=0.05, tag=tag), token
    )
    received = 0
    canceller: gevent.Greenlet | None = None
    for _chunk in stream:  # no exception may escape
        received += 1
        if received == 3:
            canceller = gevent.spawn_later(0.01, cancel)  # while the next read blocks
    ended_at = time.monotonic()

    assert canceller is not None
    canceller.join()
    # gevent closes a socket a read waits on at its hub's next turn, which a
    # worker always takes; this test's process only when it yields.
    gevent.sleep(0.1)
    assert cancelled_at, "the generator ended before cancel() ran"
    assert ended_at - cancelled_at[0] < 1.0
    assert received < 30
    wait_until(
        lambda: (
            requests.get(f"{upstream}/_stats/{tag}", timeout=2)
            .json()
            .get("disconnected_at")
        ),
        5.0,
        "the upstream to see the connection closed",
    )


def test_cancel_inside_the_loop_ends_iteration_without_exception(
    provider: OpenAICompatProvider,
) -> None:
    token = CancelToken()
    received = 0
    started = time.monotonic()
    for _chunk in provider.stream(MODEL, chat(tokens=200, delay=0.05), token):
        received += 1
        if received == 3:
            token.cancel()

    assert received < 10
    assert time.monotonic() - started < 2.0


def test_stream_with_an_already_cancelled_token_ends_without_exception(
    provider: OpenAICompatProvider,
) -> None:
    token = CancelToken()
    token.cancel()
    started = time.monotonic()
    chunks = collect(provider, chat(tokens=200, delay=0.05), token)

    assert len(chunks) < 10
    assert time.monotonic() - started < 2.0


# --- SimulatedProvider ----------------------------------------------------------------


def test_simulated_reply_is_deterministic_per_messages() -> None:
    sim = simulated_provider()
    other = [{"role": "user", "content": "something else entirely"}]

    first = "".join(contents(collect(sim, chat())))
    again = "".join(contents(collect(sim, chat())))
    different = "".join(contents(collect(sim, chat(other))))

    assert first == again
    assert first != different
    assert first.startswith("This")


def test_simulated_yields_reply_tokens_then_stop_then_usage() -> None:
    chunks = collect(simulated_provider(reply_tokens=10), chat())

    assert len(contents(chunks)) == 10
    assert len(chunks) == 12
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 10
    assert usage["prompt_tokens"] == estimate_prompt_tokens(MESSAGES)
    assert usage["total_tokens"] == usage["prompt_tokens"] + 10


@pytest.mark.parametrize("limit_field", ["max_tokens", "max_completion_tokens"])
def test_simulated_token_limit_below_reply_length_truncates_with_finish_length(
    limit_field: str,
) -> None:
    body = {**chat(), limit_field: 4}
    chunks = collect(simulated_provider(reply_tokens=10), body)

    assert len(contents(chunks)) == 4
    assert finish_reasons(chunks) == ["length"]
    assert chunks[-1]["usage"]["completion_tokens"] == 4


def test_simulated_limit_at_or_above_reply_length_finishes_with_stop() -> None:
    chunks = collect(simulated_provider(reply_tokens=10), {**chat(), "max_tokens": 10})

    assert len(contents(chunks)) == 10
    assert finish_reasons(chunks) == ["stop"]


def test_simulated_speed_follows_first_token_delay_and_tokens_per_second() -> None:
    sim = simulated_provider(
        first_token_delay=0.05, tokens_per_second=200, reply_tokens=10
    )
    started = time.monotonic()
    stream = sim.stream(MODEL, chat(), CancelToken())
    next(stream)
    first_token_after = time.monotonic() - started
    rest = list(stream)
    total = time.monotonic() - started

    assert len(contents(rest)) == 9
    assert 0.04 <= first_token_after < 0.5
    # 0.05 s first-token delay + 9 tokens at 200/s = ~0.095 s.
    assert 0.08 <= total < 1.0


def test_simulated_cancel_stops_early_without_exception() -> None:
    sim = simulated_provider(
        first_token_delay=0.01, tokens_per_second=20, reply_tokens=200
    )
    token = CancelToken()
    received = 0
    started = time.monotonic()
    for _chunk in sim.stream(MODEL, chat(), token):
        received += 1
        if received == 3:
            token.cancel()

    assert received == 3
    assert time.monotonic() - started < 1.0


def test_simulated_cancel_from_another_thread_wakes_the_wait() -> None:
    sim = simulated_provider(first_token_delay=5.0, tokens_per_second=1, reply_tokens=5)
    token = CancelToken()
    timer = threading.Timer(0.1, token.cancel)
    started = time.monotonic()
    timer.start()
    chunks = collect(sim, chat(), token)
    timer.join()

    assert chunks == []
    assert time.monotonic() - started < 1.0


# --- reading the body -----------------------------------------------------------------


def _raw_stream_server(body: bytes, piece: int) -> int:
    """A loopback upstream that answers one request with ``body`` (chunked SSE),
    sent ``piece`` bytes at a time."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for start in range(0, len(body), piece):
                conn.sendall(body[start : start + piece])
                time.sleep(0.001)

    threading.Thread(target=serve, daemon=True).start()
    return int(listener.getsockname()[1])


def _chunked(*events: dict[str, Any]) -> bytes:
    """SSE events as a chunked body: one with an extension, then a trailer."""
    lines = [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [
        b"data: [DONE]\n\n"
    ]
    chunks = [b"%x;ext=1\r\n%b\r\n" % (len(lines[0]), lines[0])]
    chunks += [b"%x\r\n%b\r\n" % (len(line), line) for line in lines[1:]]
    return b"".join(chunks) + b"0\r\nX-Trailer: 1\r\n\r\n"


def test_a_chunked_body_gives_the_same_chunks_however_it_is_split() -> None:
    body = _chunked(
        {"choices": [{"index": 0, "delta": {"content": "hello "}}]},
        {"choices": [{"index": 0, "delta": {"content": "world"}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    )
    for piece in (1, 7, len(body)):
        port = _raw_stream_server(body, piece)
        chunks = collect(openai_provider(f"http://127.0.0.1:{port}/v1"), chat())
        assert contents(chunks) == ["hello ", "world"], piece
        assert finish_reasons(chunks) == ["stop"], piece


def test_a_chunked_body_cut_short_or_malformed_is_unavailable() -> None:
    whole = _chunked({"choices": [{"index": 0, "delta": {"content": "a"}}]})
    for body in (whole[:20], b"zz\r\nhello\r\n"):
        port = _raw_stream_server(body, len(body))
        with pytest.raises(ProviderUnavailableError):
            collect(openai_provider(f"http://127.0.0.1:{port}/v1"), chat())


def test_streams_read_to_their_end_reuse_one_connection(
    provider: OpenAICompatProvider, upstream: str
) -> None:
    tags = [new_tag() for _ in range(3)]
    for tag in tags:
        assert contents(collect(provider, chat(tokens=5, tag=tag))) == FIVE_TOKENS
    ports = {seen_request(upstream, tag)["_client_port"] for tag in tags}
    assert len(ports) == 1, "each call after the first reused the connection"
