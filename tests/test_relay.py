"""Group commit of deltas: which chunks merge and which stay apart."""

from __future__ import annotations

import json
import threading
from typing import Any

from common.relay import DeltaWriter, merge


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


def test_the_writer_flushes_everything_in_order_before_closing() -> None:
    written: list[str] = []
    gate = threading.Event()

    def slow_write(events: list[tuple[str, str]]) -> None:
        gate.wait(1)
        written.extend(data for _, data in events)

    writer = DeltaWriter(slow_write)
    for piece in "abcdef":
        writer.add(chunk({"content": piece}))
    gate.set()
    writer.close()
    text = "".join(json.loads(d)["choices"][0]["delta"]["content"] for d in written)
    assert text == "abcdef"
    assert len(written) < 6, "chunks behind a slow write were merged"
