"""kombu's Redis transport: one client per channel, several messages per fetch
(see ``Channel``), a task's unacked entry written at its submit and removed by
its job's start.

kombu builds a new ``redis.Redis`` (its option and callback tables included) for
every unacked-bookkeeping pipeline and every ack: at hundreds of tasks per
second that was a measurable share of a worker's CPU (bench/RESULTS.md). A
``redis.Redis`` takes a pooled connection per command, so one object can serve
every greenlet of the channel.

kombu keeps each delivered message in an "unacked" hash (and an index by time)
until it is acknowledged, and pushes it back on its queue if that has not
happened within the visibility timeout: so a message its worker took and died
with is delivered again. Writing the entry when the message is delivered is a
transaction of its own, and acknowledging it another. A job's task message needs
neither:

- the submit that pushes the message writes its entry in the same script
  (``JobStore.create``; the message carries ``UNACKED_AT_SUBMIT``), timed from
  the submit, so its delivery only notes it in memory. A message is then never
  only in a worker's memory, not even between its delivery and its
  bookkeeping as with kombu's own order;
- the job's start removes the entry (``JobStore.start``), started or refused:
  from then on the job's lease keeps it from being lost (the reaper queues it
  again if its worker dies), and the ack Celery sends after the task only
  forgets the message in memory.

The cost: a message still queued a visibility timeout after its submit is pushed
once more (kombu restores it); its second delivery finds the job started or
done and its start refuses it. A worker that puts a job back on its queue (the
reaper, the shutdown hand-back) pushes its message the same way, in the script
that makes it queued. A message kombu pushed back (redelivered) gets kombu's own
bookkeeping, as does any message sent another way (``send_task``).
"""

from __future__ import annotations

from functools import cached_property
from queue import Empty
from time import monotonic
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str

from common.jobs.model import Unacked

#: Delivery tags whose unacked entry a job's start removed, until Celery acks them.
_settled: set[str] = set()
#: Message property: this message's unacked entry was written when it was sent.
UNACKED_AT_SUBMIT = "llmq_unacked_at_submit"


def unacked_keys(transport_options: dict[str, Any]) -> tuple[str, str]:
    """kombu's unacked hash and its index, as the transport options name them."""
    prefix = transport_options.get("global_keyprefix", "")
    return (
        prefix + transport_options.get("unacked_key", Channel.unacked_key),
        prefix + transport_options.get("unacked_index_key", Channel.unacked_index_key),
    )


def unacked_entry(transport_options: dict[str, Any], tag: str | None) -> Unacked | None:
    """Where kombu keeps the message with delivery tag ``tag`` until it is acked."""
    return (*unacked_keys(transport_options), tag) if tag else None


def settled(tag: str | None) -> None:
    """Note that the unacked entry of ``tag`` is gone: its ack needs no round trip."""
    if tag:
        _settled.add(tag)


class QoS(kombu_redis.QoS):
    """Redis QoS that skips Redis for entries written at submit and settled at start."""

    def append(self, message: Any, delivery_tag: str) -> None:
        if message.properties.get(UNACKED_AT_SUBMIT) and not (
            message.delivery_info.get("redelivered")
        ):
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        try:
            _settled.remove(delivery_tag)
        except KeyError:
            super().ack(delivery_tag)
        else:
            virtual.QoS.ack(self, delivery_tag)


#: Most task messages one fetch takes.
FETCH_MAX = 16
#: The first Redis version with BLMPOP.
BLMPOP_SINCE = 7


class Channel(kombu_redis.Channel):
    """A Redis channel that reuses its synchronous client and fetches in batches.

    kombu takes one message per BRPOP: a round trip, and a wake-up of Redis, per
    task. On Redis 7 one BLMPOP takes up to ``FETCH_MAX`` (never more than the
    prefetch limit lets in) from the first non-empty queue in kombu's priority
    order, oldest first, as BRPOP would one by one; submits that arrive
    together are then delivered together, and their starts share a round trip
    (common/redis/groupcall.py). An older Redis gets BRPOP as before.
    """

    QoS = QoS

    @cached_property
    def _fetches_many(self) -> bool:
        version = str(self.client.info("server")["redis_version"])
        return int(version.split(".")[0]) >= BLMPOP_SINCE

    def _brpop_start(self, timeout: float | None = None) -> None:
        if not self._fetches_many:
            super()._brpop_start(timeout)
            return
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [
            self.global_keyprefix + self._q_for_pri(queue, pri)
            for pri in self.priority_steps
            for queue in queues
        ]
        count = min(FETCH_MAX, self.qos.can_consume_max_estimate() or FETCH_MAX)
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu: None
        self.client.connection.send_command(
            "BLMPOP",
            self.brpop_timeout if timeout is None else timeout,
            len(keys),
            *keys,
            "RIGHT",
            "COUNT",
            max(1, count),
        )

    def _brpop_read(self, **options: Any) -> bool:
        """Deliver what the fetch took, as kombu's ``_brpop_read`` does one message."""
        if not self._fetches_many:
            return bool(super()._brpop_read(**options))
        try:
            try:
                # Not the prefixing client's own parse_response, which knows BRPOP's
                # reply alone.
                reply = redis.Redis.parse_response(
                    self.client, self.client.connection, "BLMPOP", **options
                )
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not reply:
                raise Empty()
            key, items = reply
            queue = bytes_to_str(key)[len(self.global_keyprefix) :]
            queue = queue.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            for item in items:
                self.connection._deliver(kombu_redis.loads(bytes_to_str(item)), queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu: False or a connection
            self._flush_brpop_reauth()

    @cached_property
    def _sync_client(self) -> Any:
        return super()._create_client()

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        return self._sync_client


class Transport(kombu_redis.Transport):
    """The Redis transport, with :class:`Channel`."""

    Channel = Channel
