"""Reading and following a job's event log (a Redis stream with ids ``0-<n>``).

Every appended event is also published on the job's channel. A web process
follows all its streams through one ``Hub``: a single pub/sub connection whose
messages are handed to local queues, so Redis connections do not grow with the
number of open streams. The stream stays the record: a follower backfills from
it when it starts and whenever an id is skipped (a message lost in a reconnect),
so every event arrives exactly once and in order.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import cast

import redis

from common import keys

log = logging.getLogger(__name__)

#: Most entries fetched by one read of an event log.
READ_BATCH_EVENTS = 1000
#: How long a follower waits for Redis to confirm its subscription.
SUBSCRIBE_WAIT_SECONDS = 2.0
#: Pause before the hub reconnects after losing Redis.
HUB_RETRY_SECONDS = 0.5


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


def _parse_message(payload: bytes) -> list[Event]:
    """The events of one published message: a ``<id> <type> <data>`` line each."""
    events = []
    for line in payload.split(b"\n"):
        number, kind, data = line.split(b" ", 2)
        events.append(Event(int(number), kind.decode(), data))
    return events


class _Channel:
    """The local followers of one job's channel."""

    def __init__(self) -> None:
        self.queues: list[queue.SimpleQueue[Event]] = []
        self.ready = threading.Event()


class Hub:
    """One pub/sub connection per process, shared by all of its followers."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._channels: dict[bytes, _Channel] = {}
        self._lock = threading.Lock()
        self._pubsub: redis.client.PubSub | None = None
        self._started = False
        self._wake = threading.Event()  # set when the first channel is subscribed

    def subscribe(self, job_id: str) -> queue.SimpleQueue[Event]:
        """A queue receiving the job's events from now on (once Redis confirms)."""
        name = keys.notify_channel(job_id).encode()
        inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
        with self._lock:
            self._ensure_started()
            channel = self._channels.get(name)
            if channel is None:
                channel = self._channels[name] = _Channel()
                assert self._pubsub is not None
                self._pubsub.subscribe(name)
                self._wake.set()
            channel.queues.append(inbox)
        channel.ready.wait(SUBSCRIBE_WAIT_SECONDS)
        return inbox

    def unsubscribe(self, job_id: str, inbox: queue.SimpleQueue[Event]) -> None:
        name = keys.notify_channel(job_id).encode()
        with self._lock:
            channel = self._channels.get(name)
            if channel is None:
                return
            if inbox in channel.queues:
                channel.queues.remove(inbox)
            if not channel.queues:
                del self._channels[name]
                if self._pubsub is not None:
                    try:
                        self._pubsub.unsubscribe(name)  # type: ignore[no-untyped-call]
                    except redis.RedisError:
                        pass  # the reconnect re-subscribes only live channels

    def _ensure_started(self) -> None:
        if self._started:
            return
        self._started = True
        self._pubsub = self.redis.pubsub()  # type: ignore[no-untyped-call]
        threading.Thread(target=self._listen, name="llmq-hub", daemon=True).start()

    def _listen(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                if not self._pubsub.subscribed:
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                message = self._pubsub.get_message(timeout=1.0)
            except redis.RedisError:
                log.warning("event hub lost Redis; followers will backfill")
                threading.Event().wait(HUB_RETRY_SECONDS)
                continue
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, object]) -> None:
        channel = self._channels.get(cast(bytes, message["channel"]))
        if channel is None:
            return
        if message["type"] == "subscribe":
            channel.ready.set()
        elif message["type"] == "message":
            events = _parse_message(cast(bytes, message["data"]))
            for inbox in list(channel.queues):
                for event in events:
                    inbox.put(event)


class EventLog:
    """Replays and follows event logs."""

    def __init__(self, client: redis.Redis, hub: Hub) -> None:
        self.redis = client
        self.hub = hub

    def last_id(self, job_id: str) -> int:
        """The id of the newest event (0 if none)."""
        return self.redis.xlen(keys.events_key(job_id))

    def read(self, job_id: str, after: int) -> list[Event]:
        """Events with id > ``after`` that exist now."""
        entries = self.redis.xrange(
            keys.events_key(job_id), f"(0-{after}", "+", count=READ_BATCH_EVENTS
        )
        return _events(cast(_Entries, entries))

    def follow(
        self,
        job_id: str,
        after: int,
        idle_seconds: float,
        inbox: queue.SimpleQueue[Event] | None = None,
    ) -> Iterator[Event | None]:
        """Yield every event after ``after`` until ``done``; None after each idle spell.

        ``inbox``: the job's subscription, taken before any event after ``after``
        could be written (its submitter subscribed before creating it), so the
        first read of the log is skipped. Ends early if the log disappears (the
        job expired).
        """
        fresh = inbox is not None
        if inbox is None:
            inbox = self.hub.subscribe(job_id)
        try:
            last, idle = after, False
            while True:
                # Backfill what the stream holds beyond ``last``: at the start
                # (unless subscribed before the job existed), after a skipped id,
                # and after a silence.
                batch = [] if fresh else self.read(job_id, last)
                fresh = False
                for event in batch:
                    yield event
                    last = event.id
                    if event.type == "done":
                        return
                if len(batch) == READ_BATCH_EVENTS:
                    continue
                if idle and not batch:
                    if not self.redis.exists(keys.events_key(job_id)):
                        return
                    yield None
                last, outcome = yield from self._live(inbox, last, idle_seconds)
                if outcome == "done":
                    return
                idle = outcome == "idle"
        finally:
            self.hub.unsubscribe(job_id, inbox)

    @staticmethod
    def _live(
        inbox: queue.SimpleQueue[Event], last: int, idle_seconds: float
    ) -> Generator[Event, None, tuple[int, str]]:
        """Relay published events in order until ``done``, a skipped id, or silence."""
        while True:
            try:
                event = inbox.get(timeout=idle_seconds)
            except queue.Empty:
                return last, "idle"
            if event.id <= last:
                continue  # already backfilled
            if event.id > last + 1:
                return last, "gap"
            yield event
            last = event.id
            if event.type == "done":
                return last, "done"
