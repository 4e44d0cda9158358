"""A web process hears the jobs it submits on its own channel, not one per job."""

from __future__ import annotations

import logging

import pytest
import redis

from common.jobs.events import Hub
from common.jobs.store import JobStore
from common.redis import keys
from common.redis.client import connect
from tests.conftest import RedisServer, job_fields, wait_until


def _create(store: JobStore, notify: str | None = None) -> str:
    fields = job_fields(**({"notify": notify} if notify else {}))
    store.create(fields, None)
    return str(fields["id"])


def _relayed(store: JobStore, hub: Hub, delta: bytes) -> bytes:
    """A delta of a new job following ``hub``, as its inbox got it."""
    job_id = _create(store, hub.channel)
    inbox = hub.expect(job_id)
    job = store.get(job_id)
    assert job is not None
    store.transition(job, events=[("delta", delta.decode())])
    event = inbox.get(timeout=2)
    hub.unsubscribe(job_id, inbox)
    assert event.type == "delta"
    return event.data


def test_a_job_created_with_notify_reaches_its_submitters_inbox(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    store, hub = JobStore(client, 60), Hub(client)
    mine, other = _create(store, hub.channel), _create(store, hub.channel)
    inbox, other_inbox = hub.expect(mine), hub.expect(other)
    job = store.get(mine)
    assert job is not None
    store.transition(job, events=[("delta", '{"a":1}'), ("done", "{}")])
    events = [inbox.get(timeout=2), inbox.get(timeout=2)]
    assert [(e.id, e.type, e.data) for e in events] == [
        (2, "delta", b'{"a":1}'),
        (3, "done", b"{}"),
    ]
    assert other_inbox.empty(), "another job's inbox on the same channel got nothing"
    # The job's own channel had no subscriber: none was taken.
    assert client.pubsub_numsub(keys.notify_channel(mine))[0][1] == 0
    hub.unsubscribe(mine, inbox)
    hub.unsubscribe(other, other_inbox)
    assert not hub._expected


def test_one_write_of_many_jobs_is_one_message_on_the_process_channel(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    store, hub = JobStore(client, 60), Hub(client)
    ids = [_create(store, hub.channel) for _ in range(4)]
    inboxes = [hub.expect(job_id) for job_id in ids]
    jobs = []
    for job_id in ids:
        job = store.get(job_id)
        assert job is not None
        store.transition(job, lease=("take", "run1"), lease_seconds=10)
        jobs.append(job)
    listener = client.pubsub()
    listener.subscribe(hub.channel)
    assert listener.get_message(timeout=1)["type"] == "subscribe"  # type: ignore[index]
    store.append_many(
        [
            (jobs[0], "run1", {}, [("delta", '{"a":1}'), ("delta", '{"a":2}')]),
            (jobs[1], "run1", {}, [("delta", '{"b":1}')]),
            (jobs[2], "lost", {}, [("delta", '{"c":1}')]),  # refused: not its lease
            (jobs[3], "run1", {}, [("done", "{}")]),
        ]
    )
    message = listener.get_message(timeout=1)
    assert message is not None and message["type"] == "message"
    assert listener.get_message(timeout=0.2) is None, "one message for the write"
    got = [
        [(e.type, e.data) for e in (inbox.get(timeout=2) for _ in range(count))]
        for inbox, count in zip(inboxes, (2, 1, 0, 1), strict=True)
    ]
    assert got == [
        [("delta", b'{"a":1}'), ("delta", b'{"a":2}')],
        [("delta", b'{"b":1}')],
        [],
        [("done", b"{}")],
    ]
    assert all(inbox.empty() for inbox in inboxes)


def test_a_job_without_notify_publishes_only_on_its_own_channel(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    store, hub = JobStore(client, 60), Hub(client)
    job_id = _create(store)
    followed = hub.subscribe(job_id)
    expected = hub.expect(job_id)  # listening on the process channel too
    job = store.get(job_id)
    assert job is not None
    store.transition(job, events=[("delta", "{}")])
    assert followed.get(timeout=2).id == 2
    assert expected.empty()
    hub.unsubscribe(job_id, followed)
    wait_until(
        lambda: client.pubsub_numsub(keys.notify_channel(job_id))[0][1] == 0,
        5,
        "the job channel's subscription ended",
    )


def test_the_hub_listens_again_after_redis_restarts(own_redis: RedisServer) -> None:
    """The hub's read blocks on its socket; a Redis that goes away ends it, and
    the hub subscribes again once Redis is back, with no request to wake it."""
    client = connect(own_redis.url, 1.0)
    store, hub = JobStore(client, 60), Hub(client)
    before = _create(store, hub.channel)
    hub.unsubscribe(before, hub.expect(before))  # the hub is listening
    own_redis.stop()
    own_redis.start()
    wait_until(
        lambda: client.pubsub_numsub(hub.channel)[0][1] == 1,
        10,
        "the hub's subscription after the restart",
    )
    assert _relayed(store, hub, b'{"a":1}') == b'{"a":1}'


def test_the_hub_does_not_format_each_message_for_a_debug_log(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """redis-py's default push handler formats every message into a debug line."""
    caplog.set_level(logging.DEBUG, logger="push_response")
    client = redis.Redis.from_url(redis_server.url)
    store, hub = JobStore(client, 60), Hub(client)
    assert _relayed(store, hub, b'{"a":1}') == b'{"a":1}'
    assert not [r for r in caplog.records if r.name == "push_response"]
