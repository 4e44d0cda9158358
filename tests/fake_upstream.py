"""A fake OpenAI-compatible upstream for the tests, run as its own process.

Each request says how to behave in a ``fake`` object in its body (llmq passes
unknown fields through), so tests need no shared state:

    tokens       how many content tokens to stream (default 5)
    delay        seconds between tokens; first_delay before the first
    status       answer this HTTP status with an OpenAI error body (429: Retry-After)
    fail_first   with status: fail only the first N requests of the tag, then stream
    hang         seconds to sleep before answering anything
    cut_after    close the connection after this many tokens (no [DONE])
    tool_call    stream a tool call instead of text
    usage        false: send no usage chunk
    json         answer one JSON completion even though stream was asked
    crlf, comments, split_data, error_after   SSE format variations
    tag          remember progress under this name, served at GET /_stats/<tag>:
                 requests (count), times (arrival of each), inflight, max_inflight

``GET /_requests/<tag>`` returns the last request body seen with that tag.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_stats: dict[str, dict[str, Any]] = {}
_bodies: dict[str, dict[str, Any]] = {}
_lock = threading.Lock()


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-upstream",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "upstream-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _tool_chunks() -> list[dict[str, Any]]:
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    parts = ['{"city"', ': "Paris"', "}"]
    return (
        [_chunk({"role": "assistant", "tool_calls": [call]})]
        + [
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
            for p in parts
        ]
        + [_chunk({}, "tool_calls")]
    )


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/health":
            return self._json(200, {"ok": True})
        kind, _, tag = self.path.strip("/").partition("/")
        source = {"_stats": _stats, "_requests": _bodies}.get(kind)
        if source is None:
            return self._json(404, {"error": {"message": "no route"}})
        with _lock:
            return self._json(200, source.get(tag, {}))

    def do_POST(self) -> None:
        body = json.loads(
            self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}"
        )
        fake = body.get("fake") or {}
        tag = fake.get("tag")
        seen = 0
        if tag:
            with _lock:
                _bodies[tag] = {
                    **body,
                    "_authorization": self.headers.get("Authorization"),
                    "_client_port": self.client_address[1],
                    "_accept_encoding": self.headers.get("Accept-Encoding"),
                }
                stats = _stats.setdefault(
                    tag, {"requests": 0, "times": [], "inflight": 0, "max_inflight": 0}
                )
                stats.update(tokens_sent=0, disconnected_at=None, finished=False)
                stats["requests"] += 1
                stats["times"].append(time.time())
                stats["inflight"] += 1
                stats["max_inflight"] = max(stats["max_inflight"], stats["inflight"])
                seen = stats["requests"]
        try:
            self._answer(body, fake, tag, seen)
        finally:
            if tag:
                with _lock:
                    _stats[tag]["inflight"] -= 1

    def _answer(
        self, body: dict[str, Any], fake: dict[str, Any], tag: str | None, seen: int
    ) -> None:
        if fake.get("hang"):
            time.sleep(float(fake["hang"]))
        if fake.get("status") and seen <= int(fake.get("fail_first", 10**9)):
            headers = {"Retry-After": "1"} if fake["status"] == 429 else {}
            return self._json(
                int(fake["status"]),
                {
                    "error": {
                        "message": f"fake failure {fake['status']}",
                        "type": "server_error",
                    }
                },
                headers,
            )
        if not self.path.endswith("/chat/completions"):
            return self._json(404, {"error": {"message": "no route"}})
        tokens = [f"tok{i} " for i in range(int(fake.get("tokens", 5)))]
        if fake.get("json") or not body.get("stream"):
            return self._json(200, self._completion(body, "".join(tokens)))
        self._stream(body, fake, tokens, tag)

    def _completion(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-upstream",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 7,
                "completion_tokens": len(text.split()),
                "total_tokens": 7 + len(text.split()),
            },
        }

    def _stream(
        self,
        body: dict[str, Any],
        fake: dict[str, Any],
        tokens: list[str],
        tag: str | None,
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        eol = "\r\n" if fake.get("crlf") else "\n"
        if fake.get("first_delay"):
            time.sleep(float(fake["first_delay"]))
        if fake.get("tool_call"):
            chunks = _tool_chunks()
        else:
            chunks = [
                _chunk(
                    {"role": "assistant", "content": t} if i == 0 else {"content": t}
                )
                for i, t in enumerate(tokens)
            ] + [_chunk({}, "stop")]
        try:
            for i, chunk in enumerate(chunks):
                if fake.get("cut_after") is not None and i >= int(fake["cut_after"]):
                    self.wfile.write(b"5\r\ndata:")  # half a chunk, then hang up
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if fake.get("error_after") is not None and i >= int(
                    fake["error_after"]
                ):
                    self._write(
                        f"data: {json.dumps({'error': {'message': 'boom'}})}{eol}{eol}"
                    )
                    break
                if i and fake.get("delay"):
                    time.sleep(float(fake["delay"]))
                if fake.get("comments"):
                    self._write(f": keepalive{eol}{eol}")
                text = json.dumps(chunk)
                if fake.get("split_data"):
                    half = text.index(",") + 1
                    self._write(
                        f"data: {text[:half]}{eol}data: {text[half:]}{eol}{eol}"
                    )
                else:
                    self._write(f"data: {text}{eol}{eol}")
                if tag:
                    with _lock:
                        _stats[tag]["tokens_sent"] = i + 1
            else:
                if fake.get("usage", True):
                    usage = {
                        "prompt_tokens": 7,
                        "completion_tokens": len(tokens),
                        "total_tokens": 7 + len(tokens),
                    }
                    self._write(
                        f"data: {json.dumps({'choices': [], 'usage': usage})}{eol}{eol}"
                    )
                self._write(f"data: [DONE]{eol}{eol}")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            if tag:
                with _lock:
                    _stats[tag]["finished"] = True
        except OSError:
            if tag:
                with _lock:
                    _stats[tag]["disconnected_at"] = time.time()
            self.close_connection = True

    def _write(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _json(
        self, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
