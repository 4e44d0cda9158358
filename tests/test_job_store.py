"""JobStore's scripts: start (the lease taken, the job marked running and read)
and append_many (the delta writer's appends, each under its run's lease)."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

import redis

from common.jobs.events import _parse_message
from common.jobs.model import JobRecord, record_from
from common.jobs.store import JobStore
from common.redis import keys
from tests.conftest import RedisServer, job_fields
from workers.broker.messages import TaskMessage


def _store(redis_server: RedisServer) -> JobStore:
    client = redis.Redis.from_url(redis_server.url)
    return JobStore(client, 60, {("prov", "model-a"): 30.0})


def _create(store: JobStore, **extra: object) -> str:
    defaults = {
        "model": "model-a",
        "provider": "prov",
        "priority": "bulk",
        "created_at": time.time(),
    }
    fields = job_fields(**{**defaults, **extra})
    store.create(fields)
    return str(fields["id"])


def _record(job_id: str) -> JobRecord:
    return record_from(job_fields(job_id))


def _events(store: JobStore, job_id: str) -> list[dict[str, object]]:
    entries = store.redis.xrange(keys.events_key(job_id))
    return [json.loads(fields[b"d"]) for _, fields in entries]  # type: ignore[union-attr]


def test_start_takes_the_lease_and_stores_started_and_deadline(
    redis_server: RedisServer,
) -> None:
    store = _store(redis_server)
    job_id = _create(store)
    before = time.time()
    job, moved = store.start(job_id, "run1", 10)
    assert moved.applied and job is not None
    assert job.status == "running" and job.started_at is not None
    assert job.started_at >= before
    assert job.deadline_at is not None
    assert abs(job.deadline_at - (job.started_at + 30.0)) < 0.01
    assert _events(store, job_id)[-1] == {"status": "running"}
    assert job.attempts == 1, "a run that dies before its first write still counts"
    assert store.redis.zscore(keys.queued_key("bulk"), job_id) is None
    again, refused = store.start(job_id, "run2", 10)
    assert not refused.applied and refused.lease_lost
    assert again is not None and again.status == "running"


def test_a_rerun_keeps_started_at_and_announces_a_reset(
    redis_server: RedisServer,
) -> None:
    store = _store(redis_server)
    job_id = _create(store, attempts=2, started_at=123.0, model="unknown")
    job, moved = store.start(job_id, "run1", 10)
    assert moved.applied and job is not None
    assert job.started_at == 123.0 and job.attempts == 3
    assert job.deadline_at is not None and job.deadline_at <= time.time() + 1
    assert _events(store, job_id)[-1] == {"status": "running", "reset": True}


def test_start_of_a_missing_or_finished_job_is_refused(
    redis_server: RedisServer,
) -> None:
    store = _store(redis_server)
    assert store.start("job_missing", "run1", 10)[0] is None
    job_id = _create(store, status="succeeded")
    job, moved = store.start(job_id, "run1", 10)
    assert not moved.applied and job is not None and job.status == "succeeded"


def test_a_transition_back_to_queued_pushes_the_task_in_the_same_script(
    redis_server: RedisServer,
) -> None:
    store = _store(redis_server)
    job_id = _create(store)
    job, _ = store.start(job_id, "run1", 10)
    assert job is not None
    queue = f"test-requeue-{job_id}"
    tag = f"tag-{job_id}"
    task = TaskMessage(
        queue, "the message", ("test-unacked", "test-index", tag), "entry"
    )
    refused = store.transition(job, expected=("queued",), task=task)
    assert not refused.applied
    assert store.redis.llen(queue) == 0, "no task for a transition that did not apply"
    moved = store.transition(
        job,
        expected=("running",),
        fields={"status": "queued"},
        lease=("drop", "run1"),
        task=task,
    )
    assert moved.applied and moved.status == "queued"
    assert store.redis.lrange(queue, 0, -1) == [b"the message"]
    assert store.redis.hget("test-unacked", tag) == b"entry"
    assert store.redis.zscore("test-index", tag) is not None
    assert store.redis.zscore(keys.queued_key("bulk"), job_id) is not None


def test_append_many_applies_each_job_and_publishes_one_message_each(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    store = JobStore(client, 60)
    jobs = [_record(f"job_relay_{uuid.uuid4().hex}") for _ in range(3)]
    for job in jobs:
        store.create(
            {**dataclasses.asdict(job), "request": {}, "created_at": 1.0}, None
        )
        store.transition(job, lease=("take", "run1"), lease_seconds=10)
    pubsub = client.pubsub()
    pubsub.subscribe(*(keys.notify_channel(job.id) for job in jobs))
    for _ in jobs:
        pubsub.get_message(timeout=1)  # subscribe confirmations
    results = store.append_many(
        [
            (jobs[0], "run1", {"attempts": 1}, [("delta", '{"x":1}'), ("delta", "{}")]),
            (jobs[1], "other", {}, [("delta", "{}")]),
            (jobs[2], "run1", {}, [("status", '{"s":2}')]),
        ]
    )
    assert [(r.applied, r.lease_lost) for r in results] == [
        (True, False),
        (False, True),
        (True, False),
    ]
    assert store.get(jobs[0].id).attempts == 1  # type: ignore[union-attr]
    messages = [pubsub.get_message(timeout=1) for _ in range(2)]
    payloads = {m["channel"].decode(): m["data"] for m in messages if m}
    assert payloads[keys.notify_channel(jobs[0].id)] == b'2 delta {"x":1}\n3 delta {}'
    assert payloads[keys.notify_channel(jobs[2].id)] == b'2 status {"s":2}'
    assert pubsub.get_message(timeout=0.2) is None, "the refused append published"
    assert [
        e.id for e in _parse_message(payloads[keys.notify_channel(jobs[0].id)])
    ] == [
        2,
        3,
    ]


def test_an_append_finds_a_requested_cancel_and_a_vanished_job(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    store = JobStore(client, 60)
    cancelled, vanished = (_record(f"job_relay_{uuid.uuid4().hex}") for _ in range(2))
    for job in (cancelled, vanished):
        store.create(
            {**dataclasses.asdict(job), "request": {}, "created_at": 1.0}, None
        )
        store.transition(job, lease=("take", "run1"), lease_seconds=10)
    store.request_cancel(cancelled.id)
    client.delete(keys.job_key(vanished.id))
    events_before = client.xlen(keys.events_key(vanished.id))
    results = store.append_many(
        [
            (cancelled, "run1", {}, [("delta", "{}")]),
            (vanished, "run1", {}, [("delta", "{}")]),
        ]
    )
    assert [(r.applied, r.cancel_requested, r.lease_lost) for r in results] == [
        (True, True, False),  # written, and the run learns it is to stop
        (False, False, False),  # nothing to write to; not another run's lease
    ]
    assert client.xlen(keys.events_key(vanished.id)) == events_before
