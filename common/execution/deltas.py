"""Group commit of deltas: one writer per worker process for every run's chunks.

Each run hands its relabelled chunks to the process's ``DeltaBatcher``; one
writer greenlet sends what all runs have pending to Redis in one call (one
transition per run, see ``JobStore.append_many``). Writes start at most once per
window (``LLMQ_DELTA_WINDOW_MS``), except that a run's first chunk goes at once,
so time to first token never waits for it; what is still pending when a run's
stream ends is handed back to ride along with the run's own next write (its
finish), so the end of a reply does not wait either.
Chunks that pile up in between are merged (plain content deltas concatenate),
so Redis round trips, published messages and client writes grow with the
number of busy runs and the window, not with the number of tokens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from gevent import monkey

from common.batching import BatchThread
from common.jobs.model import EventType, JobRecord, Transition
from common.jobs.store import Append
from common.jsoncodec import dumps

log = logging.getLogger(__name__)

WriteMany = Callable[[Sequence[Append]], list[Transition]]

#: Most runs written by one call (bounds how long one Lua script holds Redis).
MAX_RUNS_PER_WRITE = 256
#: Pause before a failed write is tried again (Redis is unreachable).
RETRY_SECONDS = 0.5


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


class RunDeltas:
    """One run's chunks waiting for the process's writer."""

    def __init__(
        self,
        batcher: DeltaBatcher,
        job: JobRecord,
        token: str,
        unsaved: dict[str, Any],
        on_result: Callable[[Transition], None],
    ) -> None:
        self.job = job
        self.token = token
        #: The run's record fields not yet written; they ride along with its deltas.
        self.unsaved = unsaved
        self.on_result = on_result
        self.pending: list[dict[str, Any]] = []
        self.in_flight = False
        self.started = False
        #: Set while nothing of this run is pending or being written.
        self.idle = threading.Event()
        self.idle.set()
        self._batcher = batcher

    def add(self, chunk: dict[str, Any]) -> None:
        self._batcher.add(self, chunk)

    def detach(self) -> list[dict[str, Any]]:
        """Stop: the chunks not yet written, for the run's next own write to carry.

        Returns once a write of this run's earlier chunks that is in flight has
        landed, so the caller's write cannot overtake it.
        """
        return self._batcher.detach(self)


_Batch = list[tuple["RunDeltas", list[dict[str, Any]], dict[str, Any]]]


class DeltaBatcher(BatchThread[_Batch]):
    """The writer greenlet of one worker process, shared by all of its runs."""

    def __init__(self, write: WriteMany, window_seconds: float = 0.0) -> None:
        super().__init__("llmq-deltas")
        self._write = write
        self._window = window_seconds
        self._dirty: dict[int, RunDeltas] = {}
        #: Set when something must not wait out the window.
        self._urgent = threading.Event()
        self._started = False

    def open(
        self,
        job: JobRecord,
        token: str,
        unsaved: dict[str, Any],
        on_result: Callable[[Transition], None],
    ) -> RunDeltas:
        """A run's handle; ``on_result`` gets each of its writes' outcome."""
        return RunDeltas(self, job, token, unsaved, on_result)

    def add(self, run: RunDeltas, chunk: dict[str, Any]) -> None:
        first = False
        with self._lock:
            merge(run.pending, chunk)
            if not run.started:
                run.started = True
                first = True
                self._urgent.set()
            run.idle.clear()
            self._dirty[id(run)] = run
            self._start_once()
        self._wake.set()
        if first and monkey.is_module_patched("threading"):
            # Under gevent the writer runs only when this run's reader yields, and
            # a reader with chunks already buffered reads on without blocking: let
            # the writer send the first chunk now rather than after the burst.
            time.sleep(0)

    def detach(self, run: RunDeltas) -> list[dict[str, Any]]:
        with self._lock:
            leftover, run.pending = run.pending, []
            self._dirty.pop(id(run), None)
            if not run.in_flight:
                run.idle.set()
        run.idle.wait()
        return leftover

    def _take_batch(self) -> _Batch:
        with self._lock:
            # First chunks taken now are served by this write; only ones that
            # arrive while it is in flight may cut the next window short.
            self._urgent.clear()
            runs = list(self._dirty.values())[:MAX_RUNS_PER_WRITE]
            batch = []
            for run in runs:
                del self._dirty[id(run)]
                fields = dict(run.unsaved)
                run.unsaved.clear()
                batch.append((run, run.pending, fields))
                run.pending = []
                run.in_flight = True
            if self._dirty:
                self._wake.set()
            return batch

    def _send_batch(self, batch: _Batch) -> None:
        began = time.monotonic()
        try:
            results = self._write(
                [
                    (
                        run.job,
                        run.token,
                        fields,
                        [(EventType.DELTA, dumps(c)) for c in chunks],
                    )
                    for run, chunks, fields in batch
                ]
            )
        except (redis.ConnectionError, redis.TimeoutError):
            log.warning("could not reach Redis to write deltas; retrying")
            self._restore(batch)
            threading.Event().wait(RETRY_SECONDS)
            return
        except Exception:
            # Not transient: retrying would block these runs for ever. Their
            # live stream loses these deltas; each run's finish still stores
            # its whole reply (and fails the same way if Redis keeps refusing).
            log.exception("dropped a write of %d runs' deltas", len(batch))
            results = []
        for (run, _, _), result in zip(batch, results, strict=False):
            run.on_result(result)
        with self._lock:
            for run, _, _ in batch:
                run.in_flight = False
                if not run.pending:
                    run.idle.set()
        rest = began + self._window - time.monotonic()
        if rest > 0:
            self._urgent.wait(rest)

    def _restore(self, batch: _Batch) -> None:
        """Put a failed write back in front of what arrived since, to try again."""
        with self._lock:
            for run, chunks, fields in batch:
                run.in_flight = False
                for name, value in fields.items():
                    run.unsaved.setdefault(name, value)
                later, run.pending = run.pending, chunks
                for chunk in later:
                    merge(run.pending, chunk)
                self._dirty[id(run)] = run
        self._wake.set()
