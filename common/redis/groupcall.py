"""Group commit: calls made while one is on the wire go together in the next.

A busy worker runs hundreds of jobs in one process, and each job's start and
finish is one Redis script. A call costs a round trip whatever it carries: the
send alone (waking Redis) was a large share of a worker's CPU
(bench/RESULTS.md). ``GroupCall`` gives each kind of call one writer: a caller
hands its item over and waits; the writer sends everything handed over so far in
one call, and what arrives while that is on the wire goes in the next. Idle, a
call goes at once (one switch to the writer and back); busy, the calls per round
trip grow with the load and nothing waits for a timer."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from common.batching import BatchThread

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Slot(Generic[Result]):
    """One caller's wait for its result."""

    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Result | None = None
        self.error: BaseException | None = None


class GroupCall(BatchThread[list[tuple[Item, _Slot[Result]]]], Generic[Item, Result]):
    """``call(item)`` through ``call_many(items)``, shared by concurrent callers.

    ``call_many`` returns one result per item, in order. If it raises, every
    caller of that group gets the exception (as each would have by itself).
    """

    def __init__(
        self,
        call_many: Callable[[Sequence[Item]], Sequence[Result]],
        most: int,
        name: str,
    ) -> None:
        super().__init__(name)
        self._call_many = call_many
        self._most = most
        self._pending: list[tuple[Item, _Slot[Result]]] = []

    def __call__(self, item: Item) -> Result:
        slot: _Slot[Result] = _Slot()
        with self._lock:
            self._pending.append((item, slot))
            self._start_once()
        self._wake.set()
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _take_batch(self) -> list[tuple[Item, _Slot[Result]]]:
        with self._lock:
            batch = self._pending[: self._most]
            del self._pending[: self._most]
            if self._pending:
                self._wake.set()
            return batch

    def _send_batch(self, batch: list[tuple[Item, _Slot[Result]]]) -> None:
        try:
            results = self._call_many([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self._name}: {len(results)} results")
        except Exception as exc:  # each caller raises it, as its own call would
            for _, slot in batch:
                slot.error = exc
                slot.done.set()
            return
        for (_, slot), result in zip(batch, results, strict=True):
            slot.result = result
            slot.done.set()
