"""Group commit of deltas: which chunks merge, and one write for many runs."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis

from common.execution.deltas import DeltaBatcher, merge
from common.jobs.events import _parse_message
from common.jobs.model import JobRecord, Transition, record_from
from common.jobs.store import Append, JobStore
from common.redis import keys
from tests.conftest import ROOT, RedisServer, job_fields


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_plain_text_deltas_merge_into_one() -> None:
    pending: list[dict[str, Any]] = []
    for piece in ("a", "b", "c"):
        merge(pending, chunk({"content": piece}))
    assert [c["choices"][0]["delta"] for c in pending] == [{"content": "abc"}]


def test_role_finish_and_tool_calls_are_never_folded_away() -> None:
    pending: list[dict[str, Any]] = []
    merge(pending, chunk({"content": "x"}))
    merge(pending, chunk({"role": "assistant", "content": "y"}))
    merge(pending, chunk({"content": "z"}))
    merge(pending, chunk({"tool_calls": [{"index": 0}]}))
    merge(pending, chunk({"content": "w"}))
    merge(pending, chunk({}, "stop"))
    deltas = [c["choices"][0]["delta"] for c in pending]
    assert deltas == [
        {"content": "x"},
        {"role": "assistant", "content": "yz"},
        {"tool_calls": [{"index": 0}]},
        {"content": "w"},
        {},
    ]
    assert pending[-1]["choices"][0]["finish_reason"] == "stop"


def _job(job_id: str) -> JobRecord:
    return record_from(job_fields(job_id))


def test_the_batcher_writes_every_run_in_order_and_merges_what_piles_up() -> None:
    written: dict[str, list[str]] = {"a": [], "b": []}
    calls: list[int] = []
    writing, gate = threading.Event(), threading.Event()

    def slow_write(appends: Sequence[Append]) -> list[Transition]:
        writing.set()
        gate.wait(5)
        calls.append(len(appends))
        for job, _, _, events in appends:
            written[job.id].extend(data for _, data in events)
        return [Transition(True, "running", False)] * len(appends)

    batcher = DeltaBatcher(slow_write)
    results: list[Transition] = []
    runs = {
        name: batcher.open(_job(name), "t", {}, results.append) for name in ("a", "b")
    }
    for run in runs.values():
        run.add(chunk({"content": "a"}))
    assert writing.wait(5), "a run's first chunk is written at once"
    for piece in "bcdef":
        for run in runs.values():
            run.add(chunk({"content": piece}))
    leftovers: dict[str, list[dict[str, Any]]] = {}
    detaching = [
        threading.Thread(target=lambda n=n, r=r: leftovers.update({n: r.detach()}))
        for n, r in runs.items()
    ]
    for thread in detaching:
        thread.start()
    time.sleep(0.1)
    assert not leftovers, "detach waits for the write in flight"
    gate.set()
    for thread in detaching:
        thread.join(5)
    for name in ("a", "b"):
        assert [json.loads(d)["choices"][0]["delta"] for d in written[name]] == [
            {"content": "a"}
        ]
        assert [c["choices"][0]["delta"] for c in leftovers[name]] == [
            {"content": "bcdef"}
        ], "what piled up behind the write merged, and is handed back"
    assert calls == [2], "both runs went in one write"
    assert len(results) == 2


def test_append_many_applies_each_job_and_publishes_one_message_each(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    store = JobStore(client, 60)
    jobs = [_job(f"job_relay_{uuid.uuid4().hex}") for _ in range(3)]
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
    cancelled, vanished = (_job(f"job_relay_{uuid.uuid4().hex}") for _ in range(2))
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


_BURST = """
from gevent import monkey

monkey.patch_all()
import gevent

from common.execution.deltas import DeltaBatcher
from common.jobs.model import Transition

written = []


def write(appends):
    written.append(appends[0][3][0][1])
    gevent.sleep(0.01)
    return [Transition(True, "running", False)] * len(appends)


batcher = DeltaBatcher(write, 0.01)
run = batcher.open(None, "token", {}, lambda result: None)


def reader():  # chunks already buffered: it never blocks between them
    for i in range(5):
        run.add({"choices": [{"index": 0, "delta": {"content": f"t{i}"}}]})


gevent.spawn(reader).join()
gevent.sleep(0.1)
print(written)
"""


def test_a_first_chunk_is_written_before_a_burst_behind_it_is_read() -> None:
    # Under gevent the writer runs only when the reader yields: the first chunk
    # of a run yields at once, so its write does not wait for the burst.
    out = subprocess.run(
        [sys.executable, "-c", _BURST],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    written = ast.literal_eval(out.stdout.strip())
    assert '"content":"t0"' in written[0] and "t1" not in written[0]
    assert '"content":"t1t2t3t4"' in written[1]


def test_the_window_sends_a_first_chunk_at_once_and_merges_what_follows() -> None:
    writes: list[tuple[float, list[str]]] = []

    def write(appends: Sequence[Append]) -> list[Transition]:
        for _, _, _, events in appends:
            writes.append((time.monotonic(), [data for _, data in events]))
        return [Transition(True, "running", False)] * len(appends)

    batcher = DeltaBatcher(write, window_seconds=0.3)
    run = batcher.open(_job("w"), "t", {}, lambda _: None)
    began = time.monotonic()
    run.add(chunk({"content": "a"}))
    for piece in "bcd":
        time.sleep(0.02)
        run.add(chunk({"content": piece}))
    deadline = time.monotonic() + 5
    while len(writes) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    (first_at, first), (second_at, second) = writes
    assert first_at - began < 0.15, "the first chunk did not wait for the window"
    assert second_at - first_at >= 0.25, "later chunks waited out the window"
    assert [
        json.loads(d)["choices"][0]["delta"]["content"] for d in first + second
    ] == [
        "a",
        "bcd",
    ]


def test_a_write_that_fails_for_good_is_dropped_and_the_writer_goes_on() -> None:
    written: list[str] = []
    failures = [ValueError("a script bug")]

    def write(appends: Sequence[Append]) -> list[Transition]:
        if failures:
            raise failures.pop()
        for _, _, _, events in appends:
            written.extend(data for _, data in events)
        return [Transition(True, "running", False)] * len(appends)

    batcher = DeltaBatcher(write)
    first = batcher.open(_job("x"), "t", {}, lambda _: None)
    first.add(chunk({"content": "lost"}))
    _wait_for(lambda: not failures)
    assert first.detach() == [], "nothing is left waiting on the failed write"
    second = batcher.open(_job("y"), "t", {}, lambda _: None)
    second.add(chunk({"content": "kept"}))
    _wait_for(lambda: bool(written))
    assert second.detach() == []
    assert [json.loads(d)["choices"][0]["delta"]["content"] for d in written] == [
        "kept"
    ]


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
