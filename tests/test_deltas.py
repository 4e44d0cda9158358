"""Group commit of deltas: which chunks merge, and one write for many runs."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from common.execution.deltas import DeltaBatcher, merge
from common.jobs.model import JobRecord, Transition, record_from
from common.jobs.store import Append
from tests.conftest import ROOT, job_fields


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
