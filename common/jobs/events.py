"""Reading and following a job's event log (a Redis stream with ids ``0-<n>``).

Every appended event is also published on the job's channel, and on the channel
of the web process that submitted the job to follow it. A web process follows
all its streams through one ``Hub``: a single pub/sub connection whose messages
are handed to local queues, so Redis connections do not grow with the number of
open streams, and the jobs it submits need no subscription of their own. The
stream stays the record: a follower backfills from it when it starts and
whenever an id is skipped (a message lost in a reconnect), so every event
arrives exactly once and in order.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, cast

import redis

from common.jobs.model import EventType
from common.redis import keys

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


def events_of(entries: _Entries) -> list[Event]:
    """The events of a stream's entries (``XRANGE``'s reply)."""
    return [
        Event(int(entry_id.split(b"-", 1)[1]), fields[b"e"].decode(), fields[b"d"])
        for entry_id, fields in entries
    ]


def _as_received(response: Any) -> Any:
    """The hub's pub/sub push handler: the message as it came.

    redis-py's default handler (RESP3) fetches a logger and formats the whole
    message into a debug line, logged or not, for every message: about a tenth
    of a web process's CPU when it relays many streams.
    """
    return response


def _parse_message(payload: bytes) -> list[Event]:
    """The events of one published message: a ``<id> <type> <data>`` line each."""
    return [_event_line(line) for line in payload.split(b"\n")]


def _event_line(line: bytes) -> Event:
    number, kind, data = line.split(b" ", 2)
    return Event(int(number), kind.decode(), data)


def _parse_notice(payload: bytes) -> Iterator[tuple[bytes, list[Event]]]:
    """Each job's events in one message on a process channel: a
    ``<job id> <count>`` line, then that many event lines, per job."""
    lines = payload.split(b"\n")
    at = 0
    while at < len(lines):
        job_id, _, count = lines[at].partition(b" ")
        end = at + 1 + int(count)
        yield job_id, [_event_line(line) for line in lines[at + 1 : end]]
        at = end


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
        #: This process's own channel and the jobs followed through it.
        self.channel = keys.process_channel(uuid.uuid4().hex)
        self._own = _Channel()
        self._expected: dict[bytes, list[queue.SimpleQueue[Event]]] = {}

    def expect(self, job_id: str) -> queue.SimpleQueue[Event]:
        """A queue receiving the events of a job about to be created with
        ``notify`` set to this hub's ``channel`` (no subscription of its own)."""
        inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
        with self._lock:
            self._ensure_started()
            self._expected.setdefault(job_id.encode(), []).append(inbox)
        self._own.ready.wait(SUBSCRIBE_WAIT_SECONDS)
        return inbox

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
            channel.queues.append(inbox)
        channel.ready.wait(SUBSCRIBE_WAIT_SECONDS)
        return inbox

    def unsubscribe(self, job_id: str, inbox: queue.SimpleQueue[Event]) -> None:
        """End a ``subscribe`` or an ``expect``."""
        name = keys.notify_channel(job_id).encode()
        with self._lock:
            expected = self._expected.get(job_id.encode(), [])
            if inbox in expected:
                expected.remove(inbox)
                if not expected:
                    del self._expected[job_id.encode()]
                return
            channel = self._channels.get(name)
            if channel is None:
                return
            if inbox in channel.queues:
                channel.queues.remove(inbox)
            if channel.queues:
                return
            del self._channels[name]
            if self._pubsub is not None:
                try:
                    self._pubsub.unsubscribe(name)  # type: ignore[no-untyped-call]
                except redis.RedisError:
                    pass  # the reconnect re-subscribes only live channels

    def _ensure_started(self) -> None:
        """Listen on this process's channel (called under the lock)."""
        if self._started:
            return
        if self._pubsub is None:
            self._pubsub = self.redis.pubsub(push_handler_func=_as_received)
            self._channels[self.channel.encode()] = self._own
        # Raises while Redis is down; the next caller tries again.
        self._pubsub.subscribe(self.channel)
        self._started = True
        threading.Thread(target=self._listen, name="llmq-hub", daemon=True).start()

    def _listen(self) -> None:
        """Read the hub's messages as they come.

        The read blocks on the socket: waiting with a timeout would poll the
        socket and peek at it before each message (redis-py's ``can_read``),
        three system calls where one does. A Redis that goes away ends the
        read (the connection's TCP keepalive, see ``redis_client``, covers one
        that vanishes silently).
        """
        assert self._pubsub is not None
        while True:
            try:
                message = self._pubsub.get_message(timeout=None)  # type: ignore[arg-type]
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
            data = cast(bytes, message["data"])
            if channel is not self._own:
                _deliver(list(channel.queues), _parse_message(data))
                return
            for job_id, events in _parse_notice(data):
                _deliver(list(self._expected.get(job_id, ())), events)


def _deliver(inboxes: list[queue.SimpleQueue[Event]], events: list[Event]) -> None:
    for inbox in inboxes:
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

    def exists(self, job_id: str) -> bool:
        """Whether Redis still holds the job's exact log."""
        return bool(self.redis.exists(keys.events_key(job_id)))

    def read(self, job_id: str, after: int) -> list[Event]:
        """Events with id > ``after`` that exist now."""
        entries = self.redis.xrange(
            keys.events_key(job_id), f"(0-{after}", "+", count=READ_BATCH_EVENTS
        )
        return events_of(cast(_Entries, entries))

    def follow(
        self,
        job_id: str,
        after: int,
        idle_seconds: float,
        inbox: queue.SimpleQueue[Event] | None = None,
    ) -> Iterator[Event | None]:
        """Yield every event after ``after`` until ``done``; None after each idle spell.

        ``inbox``: the job's events from ``Hub.expect``, opened before the job
        was created, so nothing after ``after`` can have been missed and the
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
                    if event.type == EventType.DONE:
                        return
                if len(batch) == READ_BATCH_EVENTS:
                    continue
                if idle and not batch:
                    if not self.redis.exists(keys.events_key(job_id)):
                        return
                    yield None
                last, outcome = yield from self._live(inbox, last, idle_seconds)
                if outcome == EventType.DONE:
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
            if event.type == EventType.DONE:
                return last, EventType.DONE
