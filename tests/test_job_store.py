"""JobStore.start: one script takes the lease, marks the job running and reads it."""

from __future__ import annotations

import json
import time

import redis

from common.jobs.model import TaskMessage
from common.jobs.store import JobStore
from common.redis import keys
from tests.conftest import RedisServer, job_fields


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
