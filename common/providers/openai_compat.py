"""The ``openai`` kind: any OpenAI-compatible ``/chat/completions`` over HTTP.

This module is the one place that catches ``requests`` errors; each becomes the
matching ``ProviderError`` (with ``from exc``). Keys never enter messages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

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
from common.providers.sse import iter_sse

#: Connections kept open to one provider host: one per concurrent stream.
POOL_MAXSIZE = 1000
#: How much of an upstream error body is quoted in our error message.
ERROR_QUOTE_CHARS = 300


def _retry_after(resp: requests.Response) -> float | None:
    try:
        return float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _error_text(resp: requests.Response) -> str:
    try:
        body = resp.json()
        error = body.get("error") if isinstance(body, dict) else None
        text = error.get("message") if isinstance(error, dict) else error or body
        return str(text)[:ERROR_QUOTE_CHARS]
    except ValueError:
        return resp.text[:ERROR_QUOTE_CHARS]


def _set_read_timeout(resp: requests.Response, seconds: float) -> None:
    connection = resp.raw.connection if resp.raw is not None else None
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


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
        self.session = requests.Session()
        # Resolve proxy settings from the environment once, not on every request
        # (requests re-reads the environment and .netrc per call: ~4 % of a worker).
        self.session.proxies = requests.utils.get_environ_proxies(config.base_url or "")
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_MAXSIZE)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

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
        headers = {"Accept": "text/event-stream"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        url = f"{(self.config.base_url or '').rstrip('/')}/chat/completions"
        name = self.config.name
        try:
            resp = self.session.post(
                url,
                json=payload,
                headers=headers,
                stream=True,
                timeout=(timeouts.connect, timeouts.first_token),
            )
        except requests.Timeout as exc:
            raise ProviderTimeoutError(
                f"provider {name} did not answer in time"
            ) from exc
        except requests.RequestException as exc:
            raise ProviderUnavailableError(f"provider {name} is unreachable") from exc
        cancel.on_cancel(resp.close)
        with resp:
            if resp.status_code >= 400:
                raise self._http_error(resp)
            if "text/event-stream" not in resp.headers.get("Content-Type", ""):
                try:
                    yield from _completion_as_chunks(resp.json())
                except ValueError as exc:
                    raise ProviderBadResponseError(
                        f"provider {name} answered malformed JSON"
                    ) from exc
                return
            yield from self._read_stream(resp, cancel, timeouts)

    def _read_stream(
        self, resp: requests.Response, cancel: CancelToken, timeouts: Timeouts
    ) -> Iterator[dict[str, Any]]:
        name = self.config.name
        deadline = time.monotonic() + timeouts.total
        finished = done = False
        waiting_for_first = True
        try:
            for event in iter_sse(resp.iter_content(chunk_size=None)):
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
        except (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            OSError,
        ) as exc:
            if cancel.is_set() or done:
                return  # cancelled, or the reply was complete before the error
            cause = exc.args[0] if exc.args else None
            if isinstance(exc, requests.Timeout) or isinstance(
                cause, urllib3.exceptions.ReadTimeoutError
            ):
                raise ProviderTimeoutError(f"provider {name} went silent") from exc
            raise ProviderUnavailableError(f"provider {name} cut the stream") from exc
        except (AttributeError, ValueError):
            # Closing the response from the cancel listener can surface as a read
            # on a released connection; only then is it expected.
            if cancel.is_set():
                return
            raise
        if not finished and not cancel.is_set():
            raise ProviderUnavailableError(f"provider {name} ended the stream early")

    def _parse_chunk(self, data: str) -> dict[str, Any]:
        try:
            chunk = json.loads(data)
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

    def _http_error(self, resp: requests.Response) -> ProviderError:
        name, status = self.config.name, resp.status_code
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
