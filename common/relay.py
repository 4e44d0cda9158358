"""Group commit of a run's deltas: what piles up behind a write goes in one event.

When the system is idle every chunk is written the moment it arrives; when it is
busy, chunks that pile up behind the write in flight are merged (plain content
deltas concatenate) into one event, so Redis, the web and the client each handle
fewer, larger events instead of falling behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from common.jobs import dumps

Write = Callable[[list[tuple[str, str]]], None]


def _plain(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """The only choice of a chunk that carries text and nothing else, if it is one."""
    choices = chunk.get("choices") or []
    if len(choices) != 1 or choices[0].get("finish_reason"):
        return None
    delta = choices[0].get("delta") or {}
    return choices[0] if set(delta) <= {"content", "role"} else None


def merge(pending: list[dict[str, Any]], chunk: dict[str, Any]) -> None:
    """Add a chunk to ``pending``, folding its text into the last if both are plain."""
    new = _plain(chunk)
    last = _plain(pending[-1]) if pending else None
    if new is not None and last is not None and "role" not in new["delta"]:
        last["delta"]["content"] = last["delta"].get("content", "") + new["delta"].get(
            "content", ""
        )
        return
    pending.append(chunk)


class DeltaWriter:
    """A writer greenlet that flushes merged deltas through ``write``."""

    def __init__(self, write: Write) -> None:
        self._write = write
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(
            target=self._loop, name="llmq-deltas", daemon=True
        )
        self._thread.start()

    def add(self, chunk: dict[str, Any]) -> None:
        with self._lock:
            merge(self._pending, chunk)
        self._wake.set()

    def close(self) -> None:
        """Flush everything still pending and stop."""
        self._closing = True
        self._wake.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch, self._pending = self._pending, []
            if batch:
                self._write([("delta", dumps(chunk)) for chunk in batch])
            if self._closing:
                with self._lock:
                    if not self._pending:
                        return
                self._wake.set()  # more arrived while writing: go round again
