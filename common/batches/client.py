"""The ``llmq`` CLI's HTTP client: where llmq is, the key, and the Files and
Batches calls (API.md section 6).

The CLI must start fast, so this module imports requests and the standard
library only; common/batches/cli.py imports nothing else from ``common``.

    ClientError             root; printed as ``error: <message>``, exit 1
    ├── ConfigError         no key, a bad setting: a usage error, exit 2
    ├── UnreachableError    no connection to llmq (retryable)
    └── ApiError            llmq answered an error status (5xx and 429 retryable)
"""

from __future__ import annotations

import io
import math
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, ClassVar
from urllib.parse import quote

import requests

#: Where llmq listens when neither ``--base-url`` nor the environment says.
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
#: Read in order; the first one set wins.
BASE_URL_ENVVARS = ("LLMQ_BASE_URL", "OPENAI_BASE_URL")
API_KEY_ENVVARS = ("LLMQ_API_KEY", "OPENAI_API_KEY")
#: Seconds between two polls of a batch (tests make it short).
POLL_SECONDS_ENVVAR = "LLMQ_POLL_SECONDS"
DEFAULT_POLL_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 10.0
#: An upload is answered after llmq has checked every line of it.
READ_TIMEOUT_SECONDS = 300.0
TRANSFER_CHUNK_BYTES = 1 << 16
CHAT_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"


class ClientError(Exception):
    """Root of the CLI's errors; the message is what the user reads."""

    retryable: ClassVar[bool] = False


class ConfigError(ClientError):
    """A missing key or a bad setting: the command line must change."""


class UnreachableError(ClientError):
    """No connection to llmq: refused, unresolvable, or no answer in time."""

    retryable: ClassVar[bool] = True


class ApiError(ClientError):
    """llmq answered an error status; ``message`` and ``code`` are its own."""

    def __init__(self, status: int, message: str, code: str | None) -> None:
        super().__init__(f"{message} ({code})" if code else message)
        self.status = status
        self.message = message
        self.code = code

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        """A restart or an overload passes: 5xx and 429 are worth another try."""
        return self.status >= 500 or self.status == 429


def normalize_base_url(url: str) -> str:
    """llmq's root URL: no trailing ``/`` nor ``/v1`` (routes add ``/v1/...``)."""
    root = url.strip().rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")].rstrip("/")
    if "://" not in root:
        root = f"http://{root}"
    return root


def _first_set(names: tuple[str, ...], environ: Mapping[str, str]) -> str | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def resolve_base_url(option: str | None, environ: Mapping[str, str]) -> str:
    """``--base-url``, else ``LLMQ_BASE_URL``, else ``OPENAI_BASE_URL``, normalized."""
    chosen = option or _first_set(BASE_URL_ENVVARS, environ) or DEFAULT_BASE_URL
    return normalize_base_url(chosen)


def resolve_api_key(option: str | None, environ: Mapping[str, str]) -> str:
    """``--api-key``, else ``LLMQ_API_KEY``, else ``OPENAI_API_KEY``.

    Raises:
        ConfigError: none of them is set.
    """
    key = (option or "").strip() or _first_set(API_KEY_ENVVARS, environ)
    if not key:
        raise ConfigError(
            "no API key: pass --api-key or set LLMQ_API_KEY (or OPENAI_API_KEY)"
        )
    return key


def resolve_poll_seconds(environ: Mapping[str, str]) -> float:
    """Seconds between polls: ``LLMQ_POLL_SECONDS``, default 1.0.

    Raises:
        ConfigError: the variable is not a positive number.
    """
    text = environ.get(POLL_SECONDS_ENVVAR, "").strip()
    if not text:
        return DEFAULT_POLL_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"{POLL_SECONDS_ENVVAR} must be a positive number: {text!r}")
    return seconds


class _MultipartBody:
    """A multipart/form-data body read from disk while it is sent.

    requests' ``files=`` reads the whole file into memory first; this object
    has a length (so the request carries Content-Length, not chunks) and a
    ``read`` that requests streams from.
    """

    def __init__(self, fields: Mapping[str, str], filename: str, file: IO[bytes]):
        self.boundary = uuid.uuid4().hex
        head = b"".join(self._part(name, value) for name, value in fields.items())
        safe_name = filename.replace('"', "%22").replace("\r", "_").replace("\n", "_")
        head += (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{safe_name}"\r\nContent-Type: application/jsonl\r\n\r\n'
        ).encode()
        tail = f"\r\n--{self.boundary}--\r\n".encode()
        size = os.fstat(file.fileno()).st_size - file.tell()
        self._length = len(head) + size + len(tail)
        self._parts: list[IO[bytes]] = [io.BytesIO(head), file, io.BytesIO(tail)]

    def _part(self, name: str, value: str) -> bytes:
        return (
            f"--{self.boundary}\r\nContent-Disposition: form-data; "
            f'name="{name}"\r\n\r\n{value}\r\n'
        ).encode()

    @property
    def content_type(self) -> str:
        """The request's Content-Type header, boundary included."""
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(TRANSFER_CHUNK_BYTES):
            yield chunk

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the body (all the rest if negative)."""
        pieces: list[bytes] = []
        wanted = size
        while self._parts and wanted != 0:
            piece = self._parts[0].read(wanted)
            if not piece:
                self._parts.pop(0)
                continue
            pieces.append(piece)
            if wanted > 0:
                wanted -= len(piece)
        return b"".join(pieces)


class BatchClient:
    """llmq's Files and Batches routes, with a key; every answer is a dict."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = normalize_base_url(base_url)
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {api_key}"
        self._session.headers["User-Agent"] = "llmq-cli"

    def upload_file(self, path: Path, filename: str | None = None) -> dict[str, Any]:
        """Upload a batch input file, streamed from disk; the file object."""
        with path.open("rb") as file:
            body = _MultipartBody({"purpose": "batch"}, filename or path.name, file)
            headers = {"Content-Type": body.content_type}
            return self._json("POST", "/files", data=body, headers=headers)

    def create_batch(
        self,
        input_file_id: str,
        metadata: Mapping[str, str],
        endpoint: str = CHAT_ENDPOINT,
    ) -> dict[str, Any]:
        """Start a batch over an uploaded file; the batch object."""
        request = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": COMPLETION_WINDOW,
            "metadata": dict(metadata),
        }
        return self._json("POST", "/batches", json=request)

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        """The batch object as it is now."""
        return self._json("GET", f"/batches/{quote(batch_id, safe='')}")

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Ask llmq to cancel a batch; the batch object (``cancelling``)."""
        return self._json("POST", f"/batches/{quote(batch_id, safe='')}/cancel")

    def download_file(self, file_id: str, dest: Path) -> None:
        """Write a file's content to ``dest``, streamed."""
        route = f"/files/{quote(file_id, safe='')}/content"
        with (
            self._request("GET", route, stream=True) as response,
            dest.open("wb") as out,
        ):
            try:
                for chunk in response.iter_content(TRANSFER_CHUNK_BYTES):
                    out.write(chunk)
            except requests.RequestException as exc:
                raise UnreachableError(
                    f"the download of {file_id} from {self.base_url} broke off"
                ) from exc

    def _json(self, method: str, route: str, **kwargs: Any) -> dict[str, Any]:
        with self._request(method, route, **kwargs) as response:
            try:
                answer = response.json()
            except ValueError:
                answer = None
        if not isinstance(answer, dict):
            raise ClientError(f"{method} {route}: llmq answered something not JSON")
        return answer

    def _request(self, method: str, route: str, **kwargs: Any) -> requests.Response:
        """The response to a call, or the matching ClientError (the one place
        requests' exceptions are caught)."""
        url = f"{self.base_url}/v1{route}"
        timeout = (CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS)
        try:
            response = self._session.request(method, url, timeout=timeout, **kwargs)
        except requests.ConnectionError as exc:
            reason = "connection refused" if "refused" in str(exc) else "no connection"
            raise UnreachableError(
                f"cannot reach llmq at {self.base_url} ({reason}); is it running? "
                "(--base-url or LLMQ_BASE_URL says where it is)"
            ) from exc
        except requests.Timeout as exc:
            raise UnreachableError(f"llmq at {self.base_url} did not answer") from exc
        except requests.RequestException as exc:
            raise ClientError(f"{method} {url} failed: {exc}") from exc
        if response.status_code >= 400:
            with response:
                raise _api_error(response)
        return response


def _api_error(response: requests.Response) -> ApiError:
    """The error in an error answer: OpenAI's ``{"error": {...}}`` if it is one."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        code = error.get("code")
        return ApiError(
            response.status_code,
            error["message"],
            code if isinstance(code, str) else None,
        )
    reason = f"HTTP {response.status_code} {response.reason or ''}".strip()
    return ApiError(response.status_code, f"llmq answered {reason}", None)
