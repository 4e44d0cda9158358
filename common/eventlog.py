"""Reading and following a job's event log (a Redis stream with ids ``0-<n>``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import redis

from common import keys

#: Most entries fetched by one read of an event log.
READ_BATCH_EVENTS = 1000


@dataclass(frozen=True)
class Event:
    """One entry of a job's event log; ``data`` is the JSON text as stored."""

    id: int
    type: str
    data: bytes


_Entries = list[tuple[bytes, dict[bytes, bytes]]]


def _events(entries: _Entries) -> list[Event]:
    return [
        Event(int(entry_id.split(b"-", 1)[1]), fields[b"e"].decode(), fields[b"d"])
        for entry_id, fields in entries
    ]


class EventLog:
    """Replays and follows event logs; blocking reads use their own client.

    One blocking read lasts at most ``max_block_seconds``, which must stay
    below the blocking client's socket timeout; longer waits loop.
    """

    def __init__(
        self, client: redis.Redis, blocking: redis.Redis, max_block_seconds: float
    ) -> None:
        self.redis = client
        self.blocking = blocking
        self.max_block_seconds = max_block_seconds

    def last_id(self, job_id: str) -> int:
        """The id of the newest event (0 if none)."""
        return self.redis.xlen(keys.events_key(job_id))

    def read(self, job_id: str, after: int, block_seconds: float = 0) -> list[Event]:
        """Events with id > ``after``; waits up to ``block_seconds`` if none yet.

        The wait is capped at ``max_block_seconds``; an empty answer means none yet.
        """
        key = keys.events_key(job_id)
        if block_seconds <= 0:
            entries = self.redis.xrange(
                key, f"(0-{after}", "+", count=READ_BATCH_EVENTS
            )
            return _events(cast(_Entries, entries))
        reply = self.blocking.xread(
            {key: f"0-{after}"},
            count=READ_BATCH_EVENTS,
            block=max(1, int(min(block_seconds, self.max_block_seconds) * 1000)),
        )
        return _events(cast(list[list[_Entries]], reply)[0][1]) if reply else []

    def follow(
        self, job_id: str, after: int, idle_seconds: float
    ) -> Iterator[Event | None]:
        """Yield every event after ``after`` until ``done``; None after each idle spell.

        Ends early if the log disappears (the job expired).
        """
        while True:
            batch = self.read(job_id, after, block_seconds=idle_seconds)
            if not batch:
                if not self.redis.exists(keys.events_key(job_id)):
                    return
                yield None
                continue
            for event in batch:
                yield event
                after = event.id
                if event.type == "done":
                    return
