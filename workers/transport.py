"""kombu's Redis transport: one client per channel, acks settled by the job's start.

kombu builds a new ``redis.Redis`` (its option and callback tables included) for
every unacked-bookkeeping pipeline and every ack: at hundreds of tasks per second
that was 7 % of a worker's CPU. A ``redis.Redis`` takes a pooled connection per
command, so one object can serve every greenlet of the channel.

kombu keeps each delivered message in an "unacked" hash until it is acknowledged,
to deliver it again if its worker dies, and acknowledging it is a round trip of
its own (6 % of a worker's CPU). A job needs that only until it has started: from
then on its lease keeps it from being lost (the reaper queues it again if its
worker dies). So the job's start script removes the entry (see
``JobStore.start``), and the ack that Celery sends after the task only forgets
the message in memory.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from common.storage import Unacked

#: Delivery tags whose unacked entry a job's start removed, until Celery acks them.
_settled: set[str] = set()


def unacked_entry(transport_options: dict[str, Any], tag: str | None) -> Unacked | None:
    """Where kombu keeps the message with delivery tag ``tag`` until it is acked."""
    if not tag:
        return None
    prefix = transport_options.get("global_keyprefix", "")
    return (
        prefix + transport_options.get("unacked_key", Channel.unacked_key),
        prefix + transport_options.get("unacked_index_key", Channel.unacked_index_key),
        tag,
    )


def settled(tag: str | None) -> None:
    """Note that the unacked entry of ``tag`` is gone: its ack needs no round trip."""
    if tag:
        _settled.add(tag)


class QoS(kombu_redis.QoS):
    """Redis QoS whose ack skips Redis for messages a job's start settled."""

    def ack(self, delivery_tag: str) -> None:
        try:
            _settled.remove(delivery_tag)
        except KeyError:
            super().ack(delivery_tag)
        else:
            virtual.QoS.ack(self, delivery_tag)


class Channel(kombu_redis.Channel):
    """A Redis channel that reuses its synchronous client."""

    QoS = QoS

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
