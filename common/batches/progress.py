"""A running batch's live state in Redis: where dispatch stands, which requests
run, and which finished, in the order they finished.

Every request goes through three steps, each one atomic and each safe to repeat
after a crash:

1. ``take``: the request joins the running hash (with its byte offset, to read it
   again) in the same transaction that moves the cursor past it; then its job is
   created under an id derived from the batch and the request's index, so a
   dispatcher that died in between finds the request running with no job and
   creates it, and never a second job for it.
2. its job runs like any other;
3. ``finish``: once its job has ended, the request leaves the running hash and
   joins the done list and the counts in one script, which does nothing if it
   left before. A request refused before it ran (a bad body) is recorded the
   same way, guarded by the refused hash instead.

So the counts are derived from the jobs' ends, each counted once whatever
crashes, and the done list is the order the partial output route serves.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import cast

import redis

from common.redis import keys, scripts

#: A finished batch's live state stays this long for the partial output route.
KEEP_AFTER_END_SECONDS = 3600
_JOB_NAMESPACE = uuid.UUID("4f0c7c36-62c1-4b43-9a0e-8d0f9d2f4c11")


class Outcome(enum.StrEnum):
    """Which count a finished request adds to."""

    COMPLETED = "completed"
    FAILED = "failed"


def job_id_for(batch_id: str, index: int) -> str:
    """The id of the job that runs request ``index`` of a batch (always the same)."""
    return f"job_{uuid.uuid5(_JOB_NAMESPACE, f'{batch_id}:{index}').hex}"


@dataclass(frozen=True)
class LiveState:
    """What the state hash holds."""

    cursor: int = 0
    offset: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


class BatchProgress:
    """Reads and writes the live state of batches."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._done = scripts.register(client, "batch_line_done")

    def state(self, batch_id: str) -> LiveState | None:
        raw = cast(dict[bytes, bytes], self.redis.hgetall(keys.batch_key(batch_id)))
        if not raw:
            return None
        return LiveState(**{k.decode(): int(v) for k, v in raw.items()})

    def begin(self, batch_id: str) -> None:
        """Open a batch's state (kept if it exists: a restarted dispatcher)."""
        key = keys.batch_key(batch_id)
        pipe = self.redis.pipeline()
        for name in LiveState.__dataclass_fields__:
            pipe.hsetnx(key, name, 0)
        pipe.execute()

    def take(self, batch_id: str, index: int, offset: int, next_offset: int) -> None:
        """Mark request ``index`` (at byte ``offset``) running and move past it."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.batch_running_key(batch_id), str(index), offset)
        pipe.hset(
            keys.batch_key(batch_id),
            mapping={"cursor": index + 1, "offset": next_offset},
        )
        pipe.execute()

    def skip(self, batch_id: str, index: int, next_offset: int) -> None:
        """Move the cursor past request ``index`` (refused, already recorded)."""
        self.redis.hset(
            keys.batch_key(batch_id),
            mapping={"cursor": index + 1, "offset": next_offset},
        )

    def running(self, batch_id: str) -> dict[int, int]:
        """The requests dispatched and not finished: index -> byte offset."""
        raw = cast(
            dict[bytes, bytes], self.redis.hgetall(keys.batch_running_key(batch_id))
        )
        return {int(k): int(v) for k, v in raw.items()}

    def finish(
        self,
        batch_id: str,
        index: int,
        outcome: Outcome,
        tokens: tuple[int, int] = (0, 0),
        refused_line: bytes = b"",
    ) -> bool:
        """Record request ``index`` as finished, once; whether this call did."""
        recorded = self._done(
            keys=[
                keys.batch_key(batch_id),
                keys.batch_running_key(batch_id),
                keys.batch_done_key(batch_id),
                keys.batch_refused_key(batch_id),
            ],
            args=[index, outcome, tokens[0], tokens[1], refused_line],
        )
        return bool(recorded)

    def refused(self, batch_id: str, indexes: list[int]) -> dict[int, bytes]:
        """The output lines of those of ``indexes`` refused before they ran."""
        if not indexes:
            return {}
        values = cast(
            list[bytes | None],
            self.redis.hmget(
                keys.batch_refused_key(batch_id), [str(i) for i in indexes]
            ),
        )
        return {i: v for i, v in zip(indexes, values, strict=True) if v is not None}

    def done(self, batch_id: str, start: int = 0, stop: int = -1) -> list[int]:
        """Finished request indexes, in finishing order, from position ``start``."""
        raw = cast(
            list[bytes], self.redis.lrange(keys.batch_done_key(batch_id), start, stop)
        )
        return [int(i) for i in raw]

    def keep_for(self, batch_id: str, seconds: int = KEEP_AFTER_END_SECONDS) -> None:
        """Let an ended batch's state go after ``seconds``."""
        pipe = self.redis.pipeline()
        for key in (
            keys.batch_key(batch_id),
            keys.batch_running_key(batch_id),
            keys.batch_done_key(batch_id),
            keys.batch_refused_key(batch_id),
        ):
            pipe.expire(key, seconds)
        pipe.execute()
