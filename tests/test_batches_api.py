"""Files and batches through the official OpenAI SDK (API.md section 6)."""

from __future__ import annotations

import openai

from tests.batch_helpers import (
    file_lines,
    jsonl,
    request_line,
    run_batch,
    upload,
    wait_batch,
)
from tests.conftest import Stack


def test_the_sdk_round_trip_files_batches_and_results(
    client: openai.OpenAI,
) -> None:
    data = jsonl([request_line(f"r{i}", fake={"tokens": 3}) for i in range(5)])
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    assert (uploaded.object, uploaded.purpose, uploaded.bytes) == (
        "file",
        "batch",
        len(data),
    )
    assert client.files.retrieve(uploaded.id).filename == "in.jsonl"
    assert uploaded.id in [f.id for f in client.files.list()]
    assert client.files.content(uploaded.id).content == data

    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.status == "validating"
    assert batch.request_counts is not None and batch.request_counts.total == 5
    done = wait_batch(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.model_dump() == {"total": 5, "completed": 5, "failed": 0}
    assert done.metadata == {"job": "nightly"}
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.usage is not None and done.usage.output_tokens > 0
    assert done.error_file_id is None
    lines = file_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in lines] == [f"r{i}" for i in range(5)]
    first = lines[0]
    assert first["error"] is None
    assert first["response"]["status_code"] == 200
    body = first["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
    assert batch.id in [b.id for b in client.batches.list()]


def test_a_1000_line_batch_answers_every_custom_id_once_in_order(
    client: openai.OpenAI,
) -> None:
    ids = [f"line-{i:04d}" for i in range(1000)]
    batch_id = run_batch(
        client, jsonl([request_line(c, fake={"tokens": 2}) for c in ids])
    )
    done = wait_batch(client, batch_id, timeout=120)
    assert done.status == "completed"
    assert done.request_counts.completed == 1000
    lines = file_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in lines] == ids


def test_files_and_batches_are_visible_to_their_key_alone(
    stack: Stack, client: openai.OpenAI
) -> None:
    other = openai.OpenAI(
        base_url=f"{stack.url}/v1", api_key=stack.key(), max_retries=0
    )
    file_id = upload(client, jsonl([request_line("a")]))
    batch_id = run_batch(client, jsonl([request_line("b")]))
    for call in (
        lambda: other.files.retrieve(file_id),
        lambda: other.files.content(file_id),
        lambda: other.files.delete(file_id),
        lambda: other.batches.retrieve(batch_id),
        lambda: other.batches.cancel(batch_id),
    ):
        try:
            call()
        except openai.NotFoundError as exc:
            assert exc.body["code"] == "not_found"  # type: ignore[index]
        else:
            raise AssertionError("another key saw it")
    assert file_id not in [f.id for f in other.files.list()]
    assert batch_id not in [b.id for b in other.batches.list()]
