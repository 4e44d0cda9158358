"""The jobs API: submit, wait, follow with replay and resume, cancel, list."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import redis
import requests

from tests.conftest import Stack, chat_body, sse_events, wait_until


def submit(stack: Stack, auth: dict[str, str], **overrides: Any) -> dict[str, Any]:
    resp = requests.post(
        f"{stack.url}/v1/jobs", json=chat_body(**overrides), headers=auth, timeout=10
    )
    assert resp.status_code == 202, resp.text
    return resp.json()


def events_of(
    stack: Stack,
    auth: dict[str, str],
    job_id: str,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> list[dict[str, str]]:
    """Every SSE event of a job's stream until it ends (keepalive comments dropped)."""
    with requests.get(
        f"{stack.url}/v1/jobs/{job_id}/events",
        headers={**auth, **(headers or {})},
        stream=True,
        timeout=30,
        **kwargs,
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        return [e for e in sse_events(resp) if "comment" not in e]


def test_submit_answers_202_with_the_job_object(
    stack: Stack, auth: dict[str, str]
) -> None:
    job = submit(stack, auth, metadata={"batch": "a"})
    assert job["id"].startswith("job_") and job["object"] == "job"
    assert job["status"] in {"queued", "running", "succeeded"}
    assert job["model"] == "fake-model" and job["provider"] == "fake"
    assert job["metadata"] == {"batch": "a"} and job["priority"] == "interactive"
    for field in (
        "created_at",
        "started_at",
        "finished_at",
        "attempts",
        "result",
        "error",
        "usage",
    ):
        assert field in job


def test_a_finished_job_leaves_redis_after_its_window_not_before(
    stack: Stack, auth: dict[str, str]
) -> None:
    job = submit(stack, auth, fake={"tokens": 1})
    done = requests.get(
        f"{stack.url}/v1/jobs/{job['id']}?wait=10", headers=auth, timeout=15
    ).json()
    client = redis.Redis.from_url(stack.redis_url)
    member = f"{job['id']} {_owner(client, job['id'])}"
    wait_until(
        lambda: client.zscore("llmq:history:written", member) is not None,
        10,
        "the finished job to be written to the database",
    )
    # Dropped an hour (LLMQ_EVENTS_TTL_SECONDS' default) after it finished.
    drop_at = client.zscore("llmq:history:written", member) / 1000
    assert abs(drop_at - (done["finished_at"] + 3600)) < 2
    # Meanwhile the record's own TTL, a week, is only the last resort.
    week = 7 * 24 * 3600
    for key in (f"llmq:job:{job['id']}", f"llmq:job:{job['id']}:events"):
        assert week - 60 < client.ttl(key) <= week, key


def _owner(client: redis.Redis, job_id: str) -> str:
    return bytes(client.hget(f"llmq:job:{job_id}", "owner") or b"").decode()


def test_wait_holds_until_the_job_ends(stack: Stack, auth: dict[str, str]) -> None:
    job = submit(stack, auth, fake={"tokens": 4, "delay": 0.1})
    done = requests.get(
        f"{stack.url}/v1/jobs/{job['id']}?wait=20", headers=auth, timeout=30
    ).json()
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert done["result"]["object"] == "chat.completion"
    assert done["result"]["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 "
    assert done["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 4,
        "total_tokens": 11,
    }
    assert (
        done["started_at"] >= done["created_at"]
        and done["finished_at"] >= done["started_at"]
    )


def test_wait_returns_after_n_seconds_if_the_job_runs_on(
    stack: Stack, auth: dict[str, str]
) -> None:
    job = submit(stack, auth, fake={"tokens": 60, "delay": 0.1})
    url = f"{stack.url}/v1/jobs/{job['id']}"
    wait_until(
        lambda: (
            requests.get(url, headers=auth, timeout=10).json()["status"] == "running"
        ),
        10,
        "the job to start",
    )
    start = time.monotonic()
    seen = requests.get(f"{url}?wait=1", headers=auth, timeout=10).json()
    assert 0.9 <= time.monotonic() - start < 3
    assert seen["status"] == "running"


def _shape(events: list[dict[str, str]]) -> list[tuple[int, str]]:
    return [(int(e["id"]), e["event"]) for e in events]


def test_subscribers_before_during_and_after_the_run_see_the_same_log(
    stack: Stack, auth: dict[str, str]
) -> None:
    job = submit(stack, auth, fake={"tokens": 8, "delay": 0.15, "first_delay": 0.5})
    results: dict[str, list[dict[str, str]]] = {}

    def follow(name: str, delay: float) -> None:
        time.sleep(delay)
        results[name] = events_of(stack, auth, job["id"])

    threads = [
        threading.Thread(target=follow, args=("early", 0)),
        threading.Thread(target=follow, args=("middle", 0.9)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    results["late"] = events_of(stack, auth, job["id"])
    early = results["early"]
    ids = [int(e["id"]) for e in early]
    assert ids == list(range(1, len(ids) + 1)), "ids are 1..n with no gap or repeat"
    assert early[0]["event"] == "status" and json.loads(early[0]["data"]) == {
        "status": "queued"
    }
    assert [e["event"] for e in early].count("delta") >= 8
    assert early[-1]["event"] == "done"
    assert json.loads(early[-1]["data"])["status"] == "succeeded"
    assert results["middle"] == early and results["late"] == early


def test_delta_events_carry_chat_completion_chunks(
    stack: Stack, auth: dict[str, str]
) -> None:
    job = submit(stack, auth, fake={"tokens": 3})
    deltas = [
        json.loads(e["data"])
        for e in events_of(stack, auth, job["id"])
        if e["event"] == "delta"
    ]
    assert all(
        d["object"] == "chat.completion.chunk" and d["model"] == "fake-model"
        for d in deltas
    )
    assert (
        "".join(d["choices"][0]["delta"].get("content", "") for d in deltas)
        == "tok0 tok1 tok2 "
    )


def test_last_event_id_and_starting_after_resume_exactly_after_n(
    stack: Stack, auth: dict[str, str]
) -> None:
    job = submit(stack, auth, fake={"tokens": 5})
    full = events_of(stack, auth, job["id"])
    by_header = events_of(stack, auth, job["id"], headers={"Last-Event-ID": "3"})
    by_query = events_of(stack, auth, job["id"], params={"starting_after": 3})
    assert by_header == full[3:] and by_query == full[3:]


def test_resume_mid_run_continues_without_loss_or_duplicates(
    stack: Stack, auth: dict[str, str]
) -> None:
    job = submit(stack, auth, fake={"tokens": 10, "delay": 0.1})
    seen: list[dict[str, str]] = []
    with requests.get(
        f"{stack.url}/v1/jobs/{job['id']}/events", headers=auth, stream=True, timeout=30
    ) as resp:
        for event in sse_events(resp):
            if "comment" not in event:
                seen.append(event)
            if len(seen) == 5:
                break
    rest = events_of(stack, auth, job["id"], headers={"Last-Event-ID": seen[-1]["id"]})
    assert _shape(seen + rest) == _shape(events_of(stack, auth, job["id"]))


def test_idle_streams_get_keepalive_comments(
    stack: Stack, auth: dict[str, str]
) -> None:
    # Test keepalive is 1 s; the first token comes after 2.5 s.
    job = submit(stack, auth, fake={"tokens": 1, "first_delay": 2.5})
    with requests.get(
        f"{stack.url}/v1/jobs/{job['id']}/events", headers=auth, stream=True, timeout=30
    ) as resp:
        events = list(sse_events(resp))
    assert {"comment": "keepalive"} in events
    assert events[-1]["event"] == "done"


def test_cancel_stops_a_running_job_and_the_upstream_read_within_a_second(
    stack: Stack, auth: dict[str, str], upstream: str
) -> None:
    tag = uuid.uuid4().hex
    job = submit(stack, auth, fake={"tokens": 400, "delay": 0.05, "tag": tag})
    stats = f"{upstream}/_stats/{tag}"
    wait_until(
        lambda: requests.get(stats, timeout=5).json().get("tokens_sent", 0) >= 5,
        10,
        "tokens to flow",
    )
    cancelled_at = time.time()
    resp = requests.post(
        f"{stack.url}/v1/jobs/{job['id']}/cancel", headers=auth, timeout=5
    )
    assert resp.status_code == 200
    dropped = wait_until(
        lambda: requests.get(stats, timeout=5).json().get("disconnected_at"),
        5,
        "the worker to hang up on the upstream",
    )
    # The fake notices on its next write (every 50 ms), so allow that on top of 1 s.
    assert dropped - cancelled_at < 1.2
    final = requests.get(
        f"{stack.url}/v1/jobs/{job['id']}?wait=10", headers=auth, timeout=15
    ).json()
    assert final["status"] == "cancelled"
    generated = final["usage"]["completion_tokens"]
    assert 5 <= generated < 400, "charged only for what was generated"
    assert final["result"]["choices"][0]["message"]["content"].startswith(
        "tok0 tok1 tok2 tok3 "
    )
    events = events_of(stack, auth, job["id"])
    assert (
        events[-2]["event"] == "status"
        and json.loads(events[-2]["data"])["status"] == "cancelled"
    )
    assert events[-1]["event"] == "done"


def test_cancel_of_a_finished_job_changes_nothing(
    stack: Stack, auth: dict[str, str]
) -> None:
    job = submit(stack, auth, fake={"tokens": 1})
    requests.get(f"{stack.url}/v1/jobs/{job['id']}?wait=10", headers=auth, timeout=15)
    after = requests.post(
        f"{stack.url}/v1/jobs/{job['id']}/cancel", headers=auth, timeout=5
    )
    assert after.status_code == 200 and after.json()["status"] == "succeeded"


def test_failed_job_has_an_error_event_and_error_object(
    stack: Stack, auth: dict[str, str]
) -> None:
    job = submit(stack, auth, fake={"status": 500})
    events = events_of(stack, auth, job["id"])
    assert [e["event"] for e in events][-2:] == ["error", "done"]
    assert json.loads(events[-2]["data"])["code"] == "upstream_error"
    final = json.loads(events[-1]["data"])
    assert final["status"] == "failed"
    assert set(final["error"]) == {"message", "type", "code", "param"}


def test_list_is_newest_first_with_cursor_and_status_filter(stack: Stack) -> None:
    key = stack.key()
    auth = {"Authorization": f"Bearer {key}"}
    ids = [submit(stack, auth, fake={"tokens": 1})["id"] for _ in range(5)]
    for job_id in ids:
        requests.get(f"{stack.url}/v1/jobs/{job_id}?wait=10", headers=auth, timeout=15)
    page1 = requests.get(f"{stack.url}/v1/jobs?limit=2", headers=auth, timeout=5).json()
    assert page1["object"] == "list" and page1["has_more"] is True
    assert [j["id"] for j in page1["data"]] == ids[::-1][:2]
    assert (page1["first_id"], page1["last_id"]) == (ids[4], ids[3])
    page2 = requests.get(
        f"{stack.url}/v1/jobs?limit=10&after={page1['last_id']}",
        headers=auth,
        timeout=5,
    ).json()
    assert [j["id"] for j in page2["data"]] == ids[::-1][2:] and page2[
        "has_more"
    ] is False
    running = requests.get(
        f"{stack.url}/v1/jobs?status=running", headers=auth, timeout=5
    ).json()
    assert running["data"] == []
    done = requests.get(
        f"{stack.url}/v1/jobs?status=succeeded", headers=auth, timeout=5
    ).json()
    assert len(done["data"]) == 5


def test_idempotency_key_returns_the_same_job(
    stack: Stack, auth: dict[str, str]
) -> None:
    headers = {**auth, "Idempotency-Key": uuid.uuid4().hex}
    body = chat_body(fake={"tokens": 1})
    first = requests.post(
        f"{stack.url}/v1/jobs", json=body, headers=headers, timeout=10
    )
    again = requests.post(
        f"{stack.url}/v1/jobs", json=body, headers=headers, timeout=10
    )
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    listed = requests.get(f"{stack.url}/v1/jobs", headers=auth, timeout=5).json()
    assert len(listed["data"]) == 1


def test_idempotency_key_with_a_different_body_is_409(
    stack: Stack, auth: dict[str, str]
) -> None:
    headers = {**auth, "Idempotency-Key": uuid.uuid4().hex}
    requests.post(f"{stack.url}/v1/jobs", json=chat_body(), headers=headers, timeout=10)
    other = requests.post(
        f"{stack.url}/v1/jobs",
        json=chat_body(temperature=1),
        headers=headers,
        timeout=10,
    )
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "conflict"


def test_idempotency_keys_are_per_api_key(stack: Stack, auth: dict[str, str]) -> None:
    idem = uuid.uuid4().hex
    other = {"Authorization": f"Bearer {stack.key()}"}
    a = requests.post(
        f"{stack.url}/v1/jobs",
        json=chat_body(),
        headers={**auth, "Idempotency-Key": idem},
        timeout=10,
    )
    b = requests.post(
        f"{stack.url}/v1/jobs",
        json=chat_body(),
        headers={**other, "Idempotency-Key": idem},
        timeout=10,
    )
    assert a.json()["id"] != b.json()["id"]


def test_another_keys_job_is_404_everywhere(stack: Stack, auth: dict[str, str]) -> None:
    job = submit(stack, auth, fake={"tokens": 1})
    other = {"Authorization": f"Bearer {stack.key()}"}
    for method, path in [("GET", ""), ("GET", "/events"), ("POST", "/cancel")]:
        resp = requests.request(
            method, f"{stack.url}/v1/jobs/{job['id']}{path}", headers=other, timeout=5
        )
        assert resp.status_code == 404, path
        assert resp.json()["error"]["code"] == "not_found"
    missing = requests.get(f"{stack.url}/v1/jobs/job_nope", headers=other, timeout=5)
    assert missing.json() == resp.json() | {
        "error": {**resp.json()["error"], "message": missing.json()["error"]["message"]}
    }
    assert (
        requests.get(f"{stack.url}/v1/jobs", headers=other, timeout=5).json()["data"]
        == []
    )
