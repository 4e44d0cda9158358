"""A fast fake OpenAI-compatible upstream for benchmarks (asyncio on uvloop,
keep-alive).

Each request's body may carry ``"bench": {"tokens": N, "first_delay": s, "delay": s}``;
streams are chunked SSE with a usage chunk and ``[DONE]``, non-stream answers are
one JSON completion. Run: ``python -m bench.fake_upstream --port P``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import uvloop

_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
)


def _chunk(delta: dict[str, Any], finish: str | None, created: int) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": created,
        "model": "bench",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    data = b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _raw(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _read_request(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b"{}"
    parsed: dict[str, Any] = json.loads(body or b"{}")
    return parsed


async def _stream(
    writer: asyncio.StreamWriter, tokens: int, first: float, delay: float
) -> None:
    writer.write(_HEAD)
    if first:
        await asyncio.sleep(first)
    # Every token after the first is the same chunk: encoded once per stream.
    created = int(time.time())
    token = _chunk({"content": "tok "}, None, created)
    for i in range(tokens):
        if i and delay:
            await asyncio.sleep(delay)
        writer.write(
            token
            if i
            else _chunk({"role": "assistant", "content": "tok "}, None, created)
        )
        await writer.drain()
    usage = {
        "prompt_tokens": 8,
        "completion_tokens": tokens,
        "total_tokens": 8 + tokens,
    }
    writer.write(_chunk({}, "stop", created))
    writer.write(
        _raw(b'data: {"choices":[],"usage":' + json.dumps(usage).encode() + b"}\n\n")
    )
    writer.write(_raw(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    await writer.drain()


def _completion(tokens: int) -> bytes:
    body = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "tok " * tokens},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 8,
                "completion_tokens": tokens,
                "total_tokens": 8 + tokens,
            },
        },
        separators=(",", ":"),
    ).encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: keep-alive\r\n\r\n%s" % (len(body), body)
    )


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            request = await _read_request(reader)
            if request is None:
                return
            spec = request.get("bench") or {}
            tokens = int(spec.get("tokens", 10))
            if request.get("stream"):
                await _stream(
                    writer,
                    tokens,
                    float(spec.get("first_delay", 0)),
                    float(spec.get("delay", 0)),
                )
            else:
                await asyncio.sleep(float(spec.get("first_delay", 0)))
                writer.write(_completion(tokens))
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(main(parser.parse_args().port))
