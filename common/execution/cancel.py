"""Cancellation of running jobs: a token per job and one listener per worker process.

The web process flags the job in Redis and publishes its id on
``keys.CANCEL_CHANNEL``; the listener here trips the job's token, whose
callbacks close the upstream connection so a blocked read ends at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import StrEnum

import redis

from common.redis import keys

log = logging.getLogger(__name__)

#: Pause before re-subscribing after the listener lost Redis.
LISTENER_RETRY_SECONDS = 1.0


class StopReason(StrEnum):
    """Why a run was stopped."""

    #: The client cancelled it.
    CANCELLED = "cancelled"
    #: Another run took its lease.
    LEASE_LOST = "lease_lost"
    #: It passed its deadline.
    DEADLINE = "deadline"
    #: Its worker is shutting down.
    SHUTDOWN = "shutdown"


class CancelToken:
    """Set once a run must stop; providers wait on it instead of sleeping."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._callbacks: list[Callable[[], object]] = []
        self._lock = threading.Lock()
        self.reason: StopReason | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if cancelled meanwhile."""
        return self._event.wait(seconds) if seconds > 0 else self._event.is_set()

    def on_cancel(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` when cancelled (now, if already)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def cancel(self, reason: StopReason = StopReason.CANCELLED) -> None:
        """Trip the token (the first reason wins) and run its callbacks once."""
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a half-closed socket may complain; cancel anyway
                log.debug("cancel callback failed", exc_info=True)


class CancelRegistry:
    """This process's running jobs, and the listener that cancels them."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._tokens: dict[str, CancelToken] = {}
        self._started = False
        self._lock = threading.Lock()

    def register(self, job_id: str) -> CancelToken:
        """A token for ``job_id``; starts the listener on first use."""
        self._ensure_listener()
        token = CancelToken()
        self._tokens[job_id] = token
        return token

    def unregister(self, job_id: str) -> None:
        self._tokens.pop(job_id, None)

    def _ensure_listener(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._listen, name="llmq-cancel", daemon=True).start()

    def _listen(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(keys.CANCEL_CHANNEL)
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message and message["type"] == "message":
                        token = self._tokens.get(message["data"].decode())
                        if token:
                            token.cancel()
            except redis.RedisError:
                log.warning("cancel listener lost Redis; resubscribing")
                threading.Event().wait(LISTENER_RETRY_SECONDS)
