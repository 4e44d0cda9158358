"""How batches run: bad lines fail alone, validation names each line, cancel and
expiry mid-way, fair shares between keys, the partial output route, charging."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

import openai
import psutil
import pytest
import requests
import sqlalchemy

from common.accounts.ledger import LedgerKind
from tests.batch_helpers import (
    file_lines,
    jsonl,
    output_route,
    request_line,
    run_batch,
    upload,
    wait_batch,
    wait_status,
)
from tests.conftest import ADMIN_KEY, Stack, wait_until

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def sdk(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=30
    )


def direct_error(stack: Stack, key: str, body: dict[str, Any]) -> tuple[int, Any]:
    resp = requests.post(
        f"{stack.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    return resp.status_code, resp.json()


def test_a_bad_line_fails_alone_with_the_body_a_direct_call_gets(
    stack: Stack, api_key: str, client: openai.OpenAI
) -> None:
    lines = [
        request_line("good-1"),
        request_line("no-model", model="no-such-model"),
        request_line("hot", temperature=5),
        request_line("refused-upstream", fake={"status": 400}),
        request_line("good-2"),
    ]
    done = wait_batch(client, run_batch(client, jsonl(lines)))
    assert done.status == "completed"
    assert done.request_counts.model_dump() == {"total": 5, "completed": 2, "failed": 3}
    out = file_lines(client, done.output_file_id)
    errors = file_lines(client, done.error_file_id)
    assert [line["custom_id"] for line in out] == ["good-1", "good-2"]
    assert [line["custom_id"] for line in errors] == [
        "no-model",
        "hot",
        "refused-upstream",
    ]
    for line, request in zip(errors[:2], lines[1:3], strict=True):
        status, body = direct_error(stack, api_key, request["body"])
        assert line["error"] is None
        assert line["response"]["status_code"] == status == 400
        assert line["response"]["body"] == body
    upstream = errors[2]["response"]
    assert upstream["status_code"] == 502
    assert upstream["body"]["error"]["code"] == "upstream_error"
    assert upstream["request_id"].startswith("job_")


def test_validation_fails_the_batch_naming_each_bad_line(
    client: openai.OpenAI,
) -> None:
    wrong_url = {**request_line("c"), "url": "/v1/embeddings"}
    data = jsonl(
        [
            request_line("a"),
            "this is not json",
            request_line("a"),
            wrong_url,
            '{"custom_id": "d", "method": "POST"}',
        ]
    )
    batch = wait_batch(client, run_batch(client, data))
    assert batch.status == "failed" and batch.failed_at
    found = [(e.code, e.line) for e in batch.errors.data]
    assert found == [
        ("invalid_json_line", 2),
        ("duplicate_custom_id", 3),
        ("mismatched_url", 4),
        ("mismatched_url", 5),
    ]
    assert all(e.message for e in batch.errors.data)
    csv = wait_batch(client, run_batch(client, b"name,age\nann,3\n"))
    assert [(e.code, e.line) for e in csv.errors.data] == [
        ("invalid_json_line", 1),
        ("invalid_json_line", 2),
    ]


def test_requests_the_batch_routes_refuse_get_a_clear_4xx(
    stack: Stack, api_key: str, client: openai.OpenAI
) -> None:
    file_id = upload(client, jsonl([request_line("a")]))
    for fields, param in (
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
    ):
        body = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            **fields,
        }
        with pytest.raises(openai.BadRequestError) as bad:
            client.batches.create(**body)  # type: ignore[arg-type]
        assert bad.value.body["param"] == param  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-nope",
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    auth = {"Authorization": f"Bearer {api_key}"}
    for resp in (
        requests.post(f"{stack.url}/v1/files", data={"purpose": "batch"}, headers=auth),
        requests.post(f"{stack.url}/v1/files", json={"a": 1}, headers=auth),
        requests.post(f"{stack.url}/v1/batches", data=b"{", headers=auth),
        requests.get(f"{stack.url}/v1/batches?limit=0", headers=auth),
    ):
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] in ("invalid_params", "invalid_json")


def test_a_file_over_the_line_limit_is_refused_at_upload(
    client: openai.OpenAI,
) -> None:
    from common.config import DEFAULT_FILE_MAX_LINES

    data = jsonl([request_line(f"r{i}") for i in range(DEFAULT_FILE_MAX_LINES + 1)])
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("big.jsonl", data), purpose="batch")
    assert "50000 lines" in bad.value.message


def test_cancel_mid_way_stops_queued_lines_and_keeps_finished_ones(
    client: openai.OpenAI,
) -> None:
    ids = [f"c{i:03d}" for i in range(300)]
    slow = {"tokens": 4, "delay": 0.25}
    batch_id = run_batch(
        client, jsonl([request_line(c, model="paced-model", fake=slow) for c in ids])
    )
    wait_until(
        lambda: client.batches.retrieve(batch_id).request_counts.completed >= 20,
        30,
        "20 lines done",
    )
    cancelling = client.batches.cancel(batch_id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    done = wait_status(client, batch_id, {"cancelled"}, timeout=30)
    assert done.cancelled_at
    counts = done.request_counts
    assert counts.completed + counts.failed == counts.total == 300
    assert 20 <= counts.completed < 300
    out = file_lines(client, done.output_file_id)
    errors = file_lines(client, done.error_file_id)
    assert Counter(line["custom_id"] for line in out + errors) == Counter(ids)
    assert all(line["response"]["status_code"] == 200 for line in out)
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    for part in (out, errors):
        order = [ids.index(line["custom_id"]) for line in part]
        assert order == sorted(order)
    with pytest.raises(openai.APIStatusError) as again:
        client.batches.cancel(batch_id)
    assert again.value.status_code == 409


def test_a_batch_past_its_window_ends_expired(
    stack: Stack, client: openai.OpenAI
) -> None:
    ids = [f"e{i:03d}" for i in range(200)]
    slow = {"tokens": 4, "delay": 0.25}
    batch_id = run_batch(
        client, jsonl([request_line(c, model="paced-model", fake=slow) for c in ids])
    )
    wait_status(client, batch_id, {"in_progress"})
    engine = sqlalchemy.create_engine(stack.env["DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(
            sqlalchemy.text("UPDATE batches SET expires_at = :t WHERE id = :id"),
            {"t": int(time.time()) - 1, "id": batch_id},
        )
    done = wait_status(client, batch_id, {"expired"}, timeout=30)
    assert done.expired_at
    errors = file_lines(client, done.error_file_id)
    out = file_lines(client, done.output_file_id)
    assert Counter(line["custom_id"] for line in out + errors) == Counter(ids)
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}


def test_two_keys_share_bulk_capacity_and_a_late_small_batch_is_not_stuck(
    stack: Stack,
) -> None:
    """paced-model allows 3,000 rpm (50 a second): two 400-line batches of two
    keys move at the same rate, and a 10-line batch added later ends long
    before either."""
    alice, bob = sdk(stack, stack.key()), sdk(stack, stack.key())

    def big(prefix: str) -> bytes:
        return jsonl(
            [request_line(f"{prefix}{i}", model="paced-model") for i in range(400)]
        )

    a_id, b_id = run_batch(alice, big("a")), run_batch(bob, big("b"))
    time.sleep(4)
    a = alice.batches.retrieve(a_id).request_counts.completed
    b = bob.batches.retrieve(b_id).request_counts.completed
    assert a > 40 and b > 40, (a, b)
    assert 0.7 <= a / b <= 1.4, (a, b)
    small_id = run_batch(
        alice, jsonl([request_line(f"s{i}", model="paced-model") for i in range(10)])
    )
    started = time.monotonic()
    small = wait_batch(alice, small_id)
    assert small.status == "completed"
    assert time.monotonic() - started < 4
    assert alice.batches.retrieve(a_id).status == "in_progress"
    assert wait_batch(alice, a_id).status == wait_batch(bob, b_id).status == "completed"


def test_the_partial_output_route_hands_out_lines_as_they_finish(
    stack: Stack, api_key: str, client: openai.OpenAI
) -> None:
    ids = [f"p{i:03d}" for i in range(150)]
    batch_id = run_batch(
        client,
        jsonl(
            [
                request_line(c, model="paced-model", fake={"tokens": 2, "delay": 0.1})
                for c in ids
            ]
        ),
    )
    seen: list[str] = []
    after = None
    while client.batches.retrieve(batch_id).status not in ("completed", "failed"):
        lines = output_route(stack.url, api_key, batch_id, after)
        seen += [line["custom_id"] for line in lines]
        if lines:
            after = lines[-1]["custom_id"]
        time.sleep(0.3)
    seen += [
        line["custom_id"] for line in output_route(stack.url, api_key, batch_id, after)
    ]
    assert 0 < len(set(seen[:100]))
    assert Counter(seen) == Counter(ids)
    everything = output_route(stack.url, api_key, batch_id)
    assert sorted(line["custom_id"] for line in everything) == ids
    bad = requests.get(
        f"{stack.url}/v1/batches/{batch_id}/output?after=nope",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"


def test_every_line_is_charged_like_a_job_to_the_batch_key(stack: Stack) -> None:
    made = requests.post(
        f"{stack.url}/admin/keys",
        json={"name": f"paid-{uuid.uuid4().hex[:6]}", "balance": "1"},
        headers=ADMIN,
        timeout=10,
    ).json()
    client = sdk(stack, made["key"])
    lines = [request_line(f"m{i}", fake={"tokens": 3}) for i in range(4)]
    done = wait_batch(client, run_batch(client, jsonl(lines)))
    assert done.request_counts.completed == 4
    job_ids = {
        line["response"]["request_id"]
        for line in file_lines(client, done.output_file_id)
    }

    def settled() -> list[dict[str, Any]] | None:
        rows = requests.get(
            f"{stack.url}/admin/keys/{made['id']}/ledger",
            params={"limit": 100},
            headers=ADMIN,
            timeout=10,
        ).json()["data"]
        jobs = {r["job_id"] for r in rows if r["kind"] == LedgerKind.SETTLE}
        return rows if jobs >= job_ids else None

    rows = wait_until(settled, 20, "the batch's jobs settled")
    charged = [r for r in rows if r["kind"] == LedgerKind.SETTLE]
    assert sorted(r["job_id"] for r in charged) == sorted(job_ids)
    balance = requests.get(
        f"{stack.url}/admin/keys/{made['id']}", headers=ADMIN, timeout=10
    ).json()["balance"]
    assert float(balance) < 1


def _web_rss(url: str) -> int:
    """Resident bytes of the gunicorn serving ``url``: its master and workers."""
    port = int(url.rsplit(":", 1)[1])
    master = next(
        psutil.Process(c.pid)
        for c in psutil.net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid
    )
    return sum(p.memory_info().rss for p in [master, *master.children(recursive=True)])


def test_an_upload_is_streamed_to_disk_not_held_in_memory(
    stack: Stack, client: openai.OpenAI
) -> None:
    prompt = "y" * 4000
    data = jsonl(
        [
            request_line(f"big{i}", messages=[{"role": "user", "content": prompt}])
            for i in range(15_000)
        ]
    )
    assert len(data) > 60_000_000
    before, peak = _web_rss(stack.url), 0
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, _web_rss(stack.url))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        uploaded = client.files.create(file=("big.jsonl", data), purpose="batch")
    finally:
        sampling = False
        sampler.join()
    assert uploaded.bytes == len(data)
    assert peak - before < 20_000_000, f"the web grew {(peak - before) / 1e6:.0f} MB"
