"""The ``openai`` kind: any OpenAI-compatible ``/chat/completions`` over HTTP.

Calls go through one urllib3 connection pool per provider (requests' session
layer cost a fifth of a worker's CPU per call: environment, cookies, hooks,
adapters), keep-alive connections reused. This module is the one place that
catches HTTP client errors; each becomes the matching ``ProviderError`` (with
``from exc``). Keys never enter messages.
"""

from __future__ import annotations

import http.client
import io
import socket
import time
from collections.abc import Generator, Iterator
from typing import Any, cast
from urllib.parse import urlsplit

import urllib3
from requests.utils import get_environ_proxies
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import (
    HTTPError,
    NewConnectionError,
    ProtocolError,
    TimeoutError,
)

from common.cancel import CancelToken
from common.catalog import ModelConfig, ProviderConfig, Timeouts
from common.errors import (
    ProviderBadResponseError,
    ProviderError,
    ProviderRateLimitedError,
    ProviderRejectedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from common.jsoncodec import dumps_bytes, loads
from common.providers.sse import iter_sse

#: Connections kept open to one provider host: one per concurrent stream.
POOL_MAXSIZE = 1000
#: Most bytes taken from an upstream socket by one read.
READ_BYTES = 65536
#: How much of an upstream error body is quoted in our error message.
ERROR_QUOTE_CHARS = 300


def _retry_after(resp: urllib3.BaseHTTPResponse) -> float | None:
    try:
        return float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _error_text(resp: urllib3.BaseHTTPResponse) -> str:
    raw = resp.data
    try:
        body = loads(raw)
        error = body.get("error") if isinstance(body, dict) else None
        text = error.get("message") if isinstance(error, dict) else error or body
        return str(text)[:ERROR_QUOTE_CHARS]
    except ValueError:
        return raw.decode("utf-8", "replace")[:ERROR_QUOTE_CHARS]


def _set_read_timeout(resp: urllib3.HTTPResponse, seconds: float) -> None:
    sock = getattr(resp.connection, "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _arrivals(resp: urllib3.HTTPResponse) -> Iterator[bytes]:
    """The body in the pieces it arrives in.

    A chunked body (the usual SSE answer) is de-chunked here, as it arrives, by
    ``_dechunked``. Anything else goes through ``read1``: one read, one HTTP chunk
    at most (``stream()`` would read a body without chunked encoding, ended by
    closing the connection, to its end before yielding anything).
    """
    raw: http.client.HTTPResponse | None = getattr(resp, "_fp", None)
    decode = bool(resp.headers.get("Content-Encoding"))
    if raw is not None and raw.fp is not None and not decode:
        if raw.chunked and raw.chunk_left is None:  # nothing of it read yet
            yield from _dechunked(raw, cast(io.BufferedIOBase, raw.fp))
            return
    while data := resp.read1(READ_BYTES, decode_content=decode):
        yield data


def _dechunked(raw: http.client.HTTPResponse, fp: io.BufferedIOBase) -> Iterator[bytes]:
    """A chunked body's data, one piece per read of the socket.

    http.client hands a chunked body over one HTTP chunk per call, with several
    reads and calls per chunk; a streaming provider sends one token per chunk.
    Reading what the socket holds and splitting the chunks here costs one read
    per arrival whatever it holds, so a worker that falls behind catches up in
    fewer, larger steps. At the end the response is closed as http.client closes
    one read to its end, so the connection can serve the next call.
    """
    buffer = b""
    left = 0  # bytes of the current chunk's data not yet taken
    after_data = False  # the CRLF that ends a chunk's data is due
    while True:
        data = fp.read1(READ_BYTES)
        if not data:
            raise ProtocolError("the chunked body ended before its last chunk")
        buffer += data
        pieces = []
        while True:
            if left:
                piece = buffer[:left]
                pieces.append(piece)
                left -= len(piece)
                buffer = buffer[len(piece) :]
                if left:
                    break
                after_data = True
            if after_data:
                if len(buffer) < 2:
                    break
                buffer, after_data = buffer[2:], False
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            try:
                size = int(buffer[:end].split(b";", 1)[0], 16)
            except ValueError as exc:
                raise ProtocolError("a malformed chunk size line") from exc
            buffer = buffer[end + 2 :]
            if size == 0:
                if pieces:
                    yield b"".join(pieces)
                _end_of_chunked(raw, fp, buffer)
                return
            left = size
        if pieces:
            yield b"".join(pieces)


def _end_of_chunked(
    raw: http.client.HTTPResponse, fp: io.BufferedIOBase, buffer: bytes
) -> None:
    """Read the trailer (up to its blank line) and close ``raw`` as complete."""
    while True:
        end = buffer.find(b"\r\n")
        if end == 0:
            break
        if end > 0:
            buffer = buffer[end + 2 :]
            continue
        data = fp.read1(READ_BYTES)
        if not data:
            raise ProtocolError("the chunked body ended inside its trailer")
        buffer += data
    raw._close_conn()  # type: ignore[attr-defined]


def _connection_pool(base_url: str) -> HTTPConnectionPool:
    """A pool to the provider's host, through the environment's proxy if one applies."""
    proxy = get_environ_proxies(base_url).get(urlsplit(base_url).scheme)
    manager: urllib3.PoolManager = (
        urllib3.ProxyManager(proxy, maxsize=POOL_MAXSIZE)
        if proxy
        else urllib3.PoolManager(maxsize=POOL_MAXSIZE)
    )
    return manager.connection_from_url(base_url)


def _completion_as_chunks(body: Any) -> Iterator[dict[str, Any]]:
    """A provider that ignored ``stream`` answered one JSON completion."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise ProviderBadResponseError("provider answered neither SSE nor a completion")
    choices = []
    for choice in body["choices"]:
        delta = dict(choice.get("message") or {})
        if delta.get("tool_calls"):
            delta["tool_calls"] = [
                {"index": i, **call} for i, call in enumerate(delta["tool_calls"])
            ]
        choices.append(
            {
                "index": choice.get("index", 0),
                "delta": delta,
                "finish_reason": choice.get("finish_reason") or "stop",
            }
        )
    yield {"choices": choices}
    if body.get("usage"):
        yield {"choices": [], "usage": body["usage"]}


class OpenAICompatProvider:
    """Streams chat completions from an OpenAI-compatible base URL."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        base_url = config.base_url or ""
        self.pool = _connection_pool(base_url) if base_url else None
        # The pool is the provider's host, so urllib3 need not parse and check a
        # URL per call: the request line needs only the path, unless a proxy
        # (which wants the whole URL) is in the way.
        url = f"{base_url.rstrip('/')}/chat/completions"
        direct = self.pool is not None and self.pool.proxy is None
        self.target = urlsplit(url).path if direct else url

    def stream(
        self, model: ModelConfig, body: dict[str, Any], cancel: CancelToken
    ) -> Iterator[dict[str, Any]]:
        """POST ``body`` with ``stream: true`` and yield each chunk as it arrives."""
        timeouts = model.timeouts or self.config.timeouts
        payload = {
            **body,
            "model": model.upstream,
            "stream": True,
            "stream_options": {
                **(body.get("stream_options") or {}),
                "include_usage": True,
            },
        }
        headers = {
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
        }
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        name = self.config.name
        if self.pool is None:
            raise ProviderUnavailableError(f"provider {name} has no base_url")
        try:
            resp = self.pool.urlopen(
                "POST",
                self.target,
                body=dumps_bytes(payload),
                headers=headers,
                preload_content=False,
                retries=False,
                redirect=False,
                assert_same_host=False,
                timeout=urllib3.Timeout(
                    connect=timeouts.connect, read=timeouts.first_token
                ),
            )
        except NewConnectionError as exc:
            raise ProviderUnavailableError(f"provider {name} is unreachable") from exc
        except TimeoutError as exc:
            raise ProviderTimeoutError(
                f"provider {name} did not answer in time"
            ) from exc
        except (HTTPError, OSError) as exc:
            raise ProviderUnavailableError(f"provider {name} is unreachable") from exc
        assert isinstance(resp, urllib3.HTTPResponse)
        cancel.on_cancel(resp.close)
        reusable = False
        try:
            if resp.status >= 400:
                error = self._http_error(resp)
                resp.drain_conn()  # the unread rest of the body would poison reuse
                reusable = True
                raise error
            if "text/event-stream" not in resp.headers.get("Content-Type", ""):
                try:
                    reply = loads(resp.data)
                except ValueError as exc:
                    raise ProviderBadResponseError(
                        f"provider {name} answered malformed JSON"
                    ) from exc
                reusable = True
                yield from _completion_as_chunks(reply)
                return
            reusable = yield from self._read_stream(resp, cancel, timeouts)
        finally:
            # A connection read to the end of its body goes back to the pool for
            # the next call; any other is closed.
            if reusable and not cancel.is_set():
                resp.release_conn()
            else:
                resp.close()

    def _read_stream(
        self, resp: urllib3.HTTPResponse, cancel: CancelToken, timeouts: Timeouts
    ) -> Generator[dict[str, Any], None, bool]:
        """Yield the stream's chunks; return whether its body was read to the end."""
        name = self.config.name
        deadline = time.monotonic() + timeouts.total
        finished = done = False
        waiting_for_first = True
        try:
            for event in iter_sse(_arrivals(resp)):
                if waiting_for_first:
                    # The read timeout so far was the first-token one; from now on
                    # a silence longer than ``idle`` is the provider stalling.
                    _set_read_timeout(resp, timeouts.idle)
                    waiting_for_first = False
                data = event.data.strip()
                if done or not data:
                    continue
                if data == "[DONE]":
                    # Read on to the end of the body (it ends right after [DONE]) so
                    # the connection goes back to the pool instead of being closed.
                    finished = done = True
                    continue
                chunk = self._parse_chunk(event.data)
                if any(c.get("finish_reason") for c in chunk.get("choices") or []):
                    finished = True
                yield chunk
                if time.monotonic() > deadline:
                    raise ProviderTimeoutError(
                        f"provider {name} exceeded the total timeout"
                    )
        except (HTTPError, OSError) as exc:
            if cancel.is_set() or done:
                return False  # cancelled, or the reply was complete before the error
            # urllib3's timeout, or the socket's (read by ``_dechunked``).
            timeouts_seen = (TimeoutError, socket.timeout)
            if isinstance(exc, timeouts_seen) or isinstance(
                getattr(exc, "__context__", None), timeouts_seen
            ):
                raise ProviderTimeoutError(f"provider {name} went silent") from exc
            raise ProviderUnavailableError(f"provider {name} cut the stream") from exc
        except (AttributeError, ValueError):
            # Closing the response from the cancel listener can surface as a read
            # on a released connection; only then is it expected.
            if cancel.is_set():
                return False
            raise
        if not finished and not cancel.is_set():
            raise ProviderUnavailableError(f"provider {name} ended the stream early")
        return done

    def _parse_chunk(self, data: str) -> dict[str, Any]:
        try:
            chunk = loads(data)
        except ValueError as exc:
            raise ProviderBadResponseError(
                f"provider {self.config.name} sent a malformed chunk"
            ) from exc
        if not isinstance(chunk, dict):
            raise ProviderBadResponseError(
                f"provider {self.config.name} sent a non-object"
            )
        if chunk.get("error"):
            error = chunk["error"]
            text = error.get("message") if isinstance(error, dict) else error
            raise ProviderError(
                f"provider {self.config.name} failed: {str(text)[:ERROR_QUOTE_CHARS]}"
            )
        return chunk

    def _http_error(self, resp: urllib3.BaseHTTPResponse) -> ProviderError:
        name, status = self.config.name, resp.status
        if status in (401, 403):
            return ProviderRejectedError(
                f"provider {name} refused our credentials ({status})"
            )
        text = _error_text(resp)
        if status == 429:
            return ProviderRateLimitedError(
                f"provider {name} is rate limiting: {text}",
                retry_after=_retry_after(resp),
            )
        if status >= 500:
            return ProviderUnavailableError(
                f"provider {name} answered {status}: {text}"
            )
        return ProviderRejectedError(
            f"provider {name} rejected the request ({status}): {text}"
        )
