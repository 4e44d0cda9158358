"""What the batch tests share: input files, waiting for a batch, reading results."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import openai
import requests

#: How long a test batch may take to end before the test fails.
BATCH_TIMEOUT_SECONDS = 60.0
ENDED = {"completed", "failed", "expired", "cancelled"}


def request_line(custom_id: str, **body: Any) -> dict[str, Any]:
    """One batch input line for the chat endpoint."""
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": f"say {custom_id}"}],
        **body,
    }
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": body,
    }


def jsonl(lines: list[dict[str, Any]] | list[str]) -> bytes:
    return "".join(
        (line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines
    ).encode()


def upload(client: openai.OpenAI, data: bytes, name: str = "input.jsonl") -> str:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="batch").id


def run_batch(client: openai.OpenAI, data: bytes) -> str:
    """Upload ``data`` and create its batch; the batch's id."""
    return client.batches.create(
        input_file_id=upload(client, data),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    ).id


def wait_batch(
    client: openai.OpenAI, batch_id: str, timeout: float = BATCH_TIMEOUT_SECONDS
) -> Any:
    """The batch once it has ended."""
    return wait_status(client, batch_id, ENDED, timeout)


def wait_status(
    client: openai.OpenAI, batch_id: str, statuses: set[str], timeout: float = 30
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}"
        time.sleep(0.05)


def file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def output_route(
    url: str, key: str, batch_id: str, after: str | None = None
) -> list[dict[str, Any]]:
    """The partial output route's lines."""
    resp = requests.get(
        f"{url}/v1/batches/{batch_id}/output",
        params={"after": after} if after else None,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]
