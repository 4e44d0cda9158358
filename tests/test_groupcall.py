"""Group commit: calls made while one is on the wire share the next round trip."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import redis

from common.jobs.store import JobStore, KeysChanged
from common.redis import keys
from common.redis.groupcall import GroupCall
from tests.conftest import RedisServer, job_fields, wait_until

#: How long Redis holds writes while the rest of a group gathers.
PAUSE_MS = 400


class _Recorder:
    """A ``call_many`` that notes its groups; the first waits until released."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.release = threading.Event()

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.groups.append(list(items))
        if len(self.groups) == 1:
            self.release.wait(5)
        if -1 in items:
            raise ValueError("bad item")
        return [item * 10 for item in items]


def _in_threads(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run each call in its own thread; its result or the exception it raised."""
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            results[index] = calls[index]()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
        time.sleep(0.01)  # in this order
    for thread in threads:
        thread.join(10)
    return results


def _gathered(
    most: int, items: tuple[int, ...]
) -> tuple[list[Any], _Recorder, GroupCall[int, int]]:
    """Call 1, and ``items`` in order while its call is held on the wire."""
    recorder = _Recorder()
    group = GroupCall(recorder, most=most, name="test")
    first = threading.Thread(target=group, args=(1,))
    first.start()
    wait_until(lambda: recorder.groups, 5, "the first call")
    threading.Timer(0.3, recorder.release.set).start()
    results = _in_threads([partial(group, i) for i in items])
    first.join(5)
    return results, recorder, group


def test_a_lone_call_goes_at_once() -> None:
    recorder = _Recorder()
    recorder.release.set()
    group = GroupCall(recorder, most=8, name="test")
    assert group(3) == 30
    assert group(4) == 40
    assert recorder.groups == [[3], [4]]


def test_calls_made_while_one_is_on_the_wire_go_together_in_order() -> None:
    results, recorder, _ = _gathered(8, (2, 3, 4, 5))
    assert results == [20, 30, 40, 50]  # each caller its own result
    assert recorder.groups == [[1], [2, 3, 4, 5]]


def test_most_bounds_one_call() -> None:
    results, recorder, _ = _gathered(2, (2, 3, 4, 5, 6))
    assert results == [20, 30, 40, 50, 60]
    assert recorder.groups == [[1], [2, 3], [4, 5], [6]]


def test_an_error_reaches_the_callers_of_its_group_alone() -> None:
    results, _, group = _gathered(2, (2, -1, 4))
    assert isinstance(results[0], ValueError) and isinstance(results[1], ValueError)
    assert results[2] == 40
    assert group(7) == 70  # the writer goes on


def _scripts_run(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def _status(client: redis.Redis, job_id: str) -> bytes | None:
    return client.hget(keys.job_key(job_id), "status")  # type: ignore[return-value]


def _load_scripts(store: JobStore) -> None:
    """One create, start and transition, so no later call loads its script."""
    fields = job_fields(created_at=time.time())
    store.create(fields)
    job, _ = store.start(fields["id"], "run-0", 30)
    assert job is not None
    store.transition(job, fields={"status": "succeeded"})


def _while_paused(client: redis.Redis, calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` concurrently while Redis holds writes: the first call waits
    on the wire, so all the others gather into the next."""
    client.client_pause(PAUSE_MS, all=False)  # writes only
    return _in_threads(calls)


def test_creates_starts_and_transitions_made_together_share_a_call(
    own_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(own_redis.url)
    store = JobStore(client, 60)
    _load_scripts(store)
    jobs = [job_fields(created_at=time.time()) for _ in range(5)]

    before = _scripts_run(client)
    assert _while_paused(client, [partial(store.create, f) for f in jobs]) == [None] * 5
    assert _scripts_run(client) - before == 2
    assert all(_status(client, f["id"]) == b"queued" for f in jobs)

    before = _scripts_run(client)
    started = _while_paused(
        client, [partial(store.start, f["id"], f"run-{f['id']}", 30) for f in jobs]
    )
    assert _scripts_run(client) - before == 2
    for fields, (job, moved) in zip(jobs, started, strict=True):
        assert moved.applied and job is not None
        assert job.id == fields["id"] and job.status == "running"

    before = _scripts_run(client)
    records = [record for record, _ in started]
    finished = _while_paused(
        client,
        [
            partial(
                store.transition,
                r,
                expected=("running",),
                fields={"status": "succeeded"},
                events=[("done", "{}")],
                lease=("drop", f"run-{r.id}"),
            )
            for r in records
        ],
    )
    assert _scripts_run(client) - before == 2
    assert [t.applied for t in finished] == [True] * 5
    assert all(_status(client, f["id"]) == b"succeeded" for f in jobs)


def test_each_call_of_a_group_gets_its_own_answer(own_redis: RedisServer) -> None:
    client = redis.Redis.from_url(own_redis.url)
    store = JobStore(client, 60)
    _load_scripts(store)
    claimed = job_fields(created_at=time.time())
    store.create(claimed, idempotency=("idem:a", claimed["id"]))
    fresh, stale, again = (job_fields(created_at=time.time()) for _ in range(3))
    client.incr(keys.KEYS_GENERATION_KEY)  # a key was revoked after ``stale``'s check

    answers = _while_paused(
        client,
        [
            lambda: store.create(job_fields(created_at=time.time())),
            lambda: store.create(fresh),
            lambda: store.create(stale, key_generation=""),
            lambda: store.create(again, idempotency=("idem:a", again["id"])),
        ],
    )
    assert answers[0] is None and answers[1] is None
    assert isinstance(answers[2], KeysChanged)
    assert answers[3] == claimed["id"]  # the earlier job's id, nothing written
    assert _status(client, fresh["id"]) == b"queued"
    assert not client.exists(keys.job_key(stale["id"]), keys.job_key(again["id"]))

    started = _while_paused(
        client,
        [
            lambda: store.start(claimed["id"], "run-1", 30),
            lambda: store.start(fresh["id"], "run-1", 30),
            lambda: store.start("job_missing", "run-1", 30),
            lambda: store.start(fresh["id"], "run-2", 30),  # leased by run-1
        ],
    )
    assert [moved.applied for _, moved in started] == [True, True, False, False]
    assert started[2][0] is None
    assert started[3][0] is not None and started[3][0].status == "running"
    assert client.get(keys.lease_key(fresh["id"])) == b"run-1"
