"""kombu's Redis transport with one Redis client object per channel.

kombu builds a new ``redis.Redis`` (its option and callback tables included) for
every unacked-bookkeeping pipeline and every ack: at hundreds of tasks per second
that was 7 % of a worker's CPU. A ``redis.Redis`` takes a pooled connection per
command, so one object can serve every greenlet of the channel.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    """A Redis channel that reuses its synchronous client."""

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
