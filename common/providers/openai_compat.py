"""The ``openai`` kind: any OpenAI-compatible ``/chat/completions`` over HTTP.

Calls go through ``common.providers.http_client`` (geventhttpclient), keep-alive
connections reused. This module is the one place that catches HTTP client errors;
each becomes the matching ``ProviderError`` (with ``from exc``). Keys never enter
messages.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from typing import Any
from urllib.parse import urlsplit

from geventhttpclient import HTTPClient
from geventhttpclient.response import (
    HTTPParseError,
    HTTPSocketPoolResponse,
)

from common.catalog import ModelConfig, ProviderConfig, Timeouts
from common.errors import (
    ProviderBadResponseError,
    ProviderError,
    ProviderRateLimitedError,
    ProviderRejectedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from common.execution.cancel import CancelToken
from common.jsoncodec import dumps_bytes, loads
from common.providers import http_client
from common.providers.sse import iter_sse

#: How much of an upstream error body is quoted in our error message.
ERROR_QUOTE_CHARS = 300


def _retry_after(resp: HTTPSocketPoolResponse) -> float | None:
    try:
        return float(str(resp.get("Retry-After", "")))
    except ValueError:
        return None


def _error_text(raw: bytes) -> str:
    try:
        body = loads(raw)
        error = body.get("error") if isinstance(body, dict) else None
        text = error.get("message") if isinstance(error, dict) else error or body
        return str(text)[:ERROR_QUOTE_CHARS]
    except ValueError:
        return raw.decode("utf-8", "replace")[:ERROR_QUOTE_CHARS]


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
        self.base_url = (config.base_url or "").rstrip("/")
        self.target = f"{urlsplit(self.base_url).path}/chat/completions"
        #: A client per (connect, first-token) timeout pair: a client's sockets
        #: carry its timeouts, and models of one provider may set their own.
        self.clients: dict[tuple[float, float], HTTPClient] = {}

    def _client_for(self, timeouts: Timeouts) -> HTTPClient:
        key = (timeouts.connect, timeouts.first_token)
        client = self.clients.get(key)
        if client is None:
            client = self.clients[key] = http_client.client(self.base_url, timeouts)
        return client

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
            # Without it a provider may compress, and nothing here would undo it.
            "Accept-Encoding": "identity",
            "Content-Type": "application/json",
        }
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        name = self.config.name
        if not self.base_url:
            raise ProviderUnavailableError(f"provider {name} has no base_url")
        try:
            resp = self._client_for(timeouts).request(
                "POST", self.target, body=dumps_bytes(payload), headers=headers
            )
        except TimeoutError as exc:
            raise ProviderTimeoutError(
                f"provider {name} did not answer in time"
            ) from exc
        except (HTTPParseError, OSError, RuntimeError) as exc:
            # RuntimeError: a proxy that refused the CONNECT tunnel.
            raise ProviderUnavailableError(f"provider {name} is unreachable") from exc
        cancel.on_cancel(lambda: http_client.close_under_read(resp))
        try:
            if resp.status_code >= 400:
                raise self._http_error(resp)
            if "text/event-stream" not in str(resp.get("Content-Type", "")):
                try:
                    reply = loads(resp.read())
                except ValueError as exc:
                    raise ProviderBadResponseError(
                        f"provider {name} answered malformed JSON"
                    ) from exc
                yield from _completion_as_chunks(reply)
                return
            yield from self._read_stream(resp, cancel, timeouts)
        except (HTTPParseError, OSError) as exc:  # reading an error or a JSON body
            if cancel.is_set():
                return
            if isinstance(exc, TimeoutError):
                raise ProviderTimeoutError(f"provider {name} went silent") from exc
            raise ProviderUnavailableError(f"provider {name} cut the answer") from exc
        finally:
            # A body read to its end has already given its connection back to
            # the pool for the next call; any other connection is closed.
            resp.release()

    def _read_stream(
        self,
        resp: HTTPSocketPoolResponse,
        cancel: CancelToken,
        timeouts: Timeouts,
    ) -> Generator[dict[str, Any], None, None]:
        """Yield the stream's chunks, reading its body to the end."""
        name = self.config.name
        deadline = time.monotonic() + timeouts.total
        finished = done = False
        waiting_for_first = True
        try:
            for event in iter_sse(http_client.arrivals(resp)):
                if waiting_for_first:
                    # The read timeout so far was the first-token one; from now on
                    # a silence longer than ``idle`` is the provider stalling.
                    http_client.set_read_timeout(resp, timeouts.idle)
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
        except (HTTPParseError, OSError) as exc:
            if cancel.is_set() or done:
                return  # cancelled, or the reply was complete before the error
            if isinstance(exc, TimeoutError):
                raise ProviderTimeoutError(f"provider {name} went silent") from exc
            raise ProviderUnavailableError(f"provider {name} cut the stream") from exc
        if not finished and not cancel.is_set():
            raise ProviderUnavailableError(f"provider {name} ended the stream early")

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

    def _http_error(self, resp: HTTPSocketPoolResponse) -> ProviderError:
        """The error a status of 400 or more stands for (its body read to the end)."""
        name, status = self.config.name, resp.status_code
        raw = resp.read()
        if status in (401, 403):
            return ProviderRejectedError(
                f"provider {name} refused our credentials ({status})"
            )
        text = _error_text(raw)
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
