"""One batch through llmq's Files and Batches API (API.md section 6), timed:
upload, create, follow to its end, and check its output file."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import click
import requests

#: How often the batch object is read while the batch runs.
POLL_SECONDS = 0.2
#: Statuses a batch never leaves.
_ENDED = {"completed", "failed", "expired", "cancelled"}
#: The text of each token the bench upstream sends (bench/fake_upstream.py).
_TOKEN = "tok "


def custom_id(index: int) -> str:
    """The ``custom_id`` of line ``index`` (zero-padded: sorts as it is numbered)."""
    return f"req-{index:05d}"


def batch_jsonl(lines: int, model: str, tokens: int) -> bytes:
    """A batch input file of ``lines`` chat requests for ``tokens``-token replies."""
    rows = (
        json.dumps(
            {
                "custom_id": custom_id(index),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": [{"role": "user", "content": "hi"}],
                    "bench": {"tokens": tokens, "delay": 0},
                },
            },
            separators=(",", ":"),
        )
        for index in range(lines)
    )
    return ("\n".join(rows) + "\n").encode()


@dataclass
class BatchRun:
    """What one batch did, timed from the moment it was created (monotonic)."""

    lines: int
    created: float
    #: First seen ``in_progress``; every request counted; first seen ended.
    in_progress: float = 0.0
    all_counted: float = 0.0
    ended: float = 0.0
    batch: dict[str, Any] = field(default_factory=dict)
    #: What is wrong with its result (empty: every line answered, once, in order).
    problems: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """From ``POST /v1/batches`` to the first read that saw it ended."""
        return self.ended - self.created

    @property
    def requests_per_minute(self) -> float:
        """The batch's rate while its requests ran (from ``in_progress`` to the
        last request counted): what its provider saw."""
        return self.lines * 60 / max(1e-9, self.all_counted - self.in_progress)


class Api:
    """llmq's Files and Batches routes, with one key."""

    def __init__(self, port: int, key: str) -> None:
        self.base = f"http://127.0.0.1:{port}/v1"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"

    def _json(self, resp: requests.Response) -> dict[str, Any]:
        if not resp.ok:
            raise click.ClickException(
                f"{resp.request.method} {resp.url}: {resp.status_code} {resp.text}"
            )
        body: dict[str, Any] = resp.json()
        return body

    def upload(self, content: bytes) -> str:
        """Upload a batch input file; its id."""
        resp = self.session.post(
            f"{self.base}/files",
            files={"file": ("bench.jsonl", content, "application/jsonl")},
            data={"purpose": "batch"},
            timeout=120,
        )
        return str(self._json(resp)["id"])

    def create(self, file_id: str) -> dict[str, Any]:
        """Create a batch of the file's requests; the batch object."""
        resp = self.session.post(
            f"{self.base}/batches",
            json={
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
            timeout=30,
        )
        return self._json(resp)

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._json(
            self.session.get(f"{self.base}/batches/{batch_id}", timeout=30)
        )

    def content(self, file_id: str) -> bytes:
        resp = self.session.get(f"{self.base}/files/{file_id}/content", timeout=120)
        if not resp.ok:
            raise click.ClickException(f"file {file_id}: {resp.status_code}")
        return resp.content


def run_batch(
    api: Api, lines: int, model: str, tokens: int, timeout: float
) -> BatchRun:
    """Upload and run a batch of ``lines`` requests; follow it to its end (its
    output is left to ``check_output``, so what it costs is not in its time).

    Raises:
        click.ClickException: it has not ended after ``timeout`` seconds.
    """
    file_id = api.upload(batch_jsonl(lines, model, tokens))
    run = BatchRun(lines, time.monotonic())
    batch = api.create(file_id)
    while batch["status"] not in _ENDED:
        if time.monotonic() - run.created > timeout:
            raise click.ClickException(
                f"batch {batch['id']} still {batch['status']} after {timeout:.0f} s: "
                f"{batch['request_counts']}"
            )
        time.sleep(POLL_SECONDS)
        batch = api.batch(batch["id"])
        now = time.monotonic()
        counts = batch["request_counts"]
        if not run.in_progress and batch["status"] != "validating":
            run.in_progress = now
        if not run.all_counted and counts["completed"] + counts["failed"] >= lines:
            run.all_counted = now
    run.ended = time.monotonic()
    run.all_counted = run.all_counted or run.ended
    run.batch = batch
    return run


def check_output(api: Api, batch: dict[str, Any], lines: int, tokens: int) -> list[str]:
    """What is wrong with a finished batch: its status, its counts, and its
    output file, which must answer every line once, in input order, each with
    the whole reply."""
    counts = batch["request_counts"]
    if batch["status"] != "completed":
        return [f"batch ended {batch['status']}: {batch.get('errors')}"]
    problems = []
    if counts != {"total": lines, "completed": lines, "failed": 0}:
        problems.append(f"request counts {counts}")
    if batch["error_file_id"]:
        problems.append("an error file was written")
    if not batch["output_file_id"]:
        return [*problems, "no output file"]
    rows = [
        json.loads(line)
        for line in api.content(batch["output_file_id"]).split(b"\n")
        if line
    ]
    ids = [row["custom_id"] for row in rows]
    if ids != [custom_id(index) for index in range(lines)]:
        unique = len(set(ids))
        problems.append(
            f"output has {len(ids)} lines, {unique} distinct custom_ids, "
            f"{'not ' if ids != sorted(ids) else ''}in order; {lines} expected"
        )
    short = sum(1 for row in rows if _reply_tokens(row) != tokens)
    if short:
        problems.append(f"{short} output lines without a {tokens}-token reply")
    return problems


def _reply_tokens(row: dict[str, Any]) -> int:
    response = row.get("response") or {}
    if response.get("status_code") != 200 or row.get("error"):
        return -1
    content = response["body"]["choices"][0]["message"]["content"] or ""
    return str(content).count(_TOKEN)
