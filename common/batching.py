"""The loop shared by the writers that batch what many callers hand them.

A writer is one daemon thread (a greenlet under gevent) per process, started by
the first caller: woken by ``_wake``, it takes everything handed over so far
(``_take_batch``, under the callers' lock) and sends it in one go
(``_send_batch``); what arrives meanwhile wakes it again for the next batch.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

Batch = TypeVar("Batch")


class BatchThread(Generic[Batch]):
    """A lazily started thread that sends batches; subclasses gather and send."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._started = False

    def _start_once(self) -> None:
        """Start the thread unless it runs already; call holding ``_lock``."""
        if not self._started:
            self._started = True
            threading.Thread(target=self._loop, name=self._name, daemon=True).start()

    def _take_batch(self) -> Batch | None:
        """Everything handed over so far (None or empty: nothing)."""
        raise NotImplementedError

    def _send_batch(self, batch: Batch) -> None:
        """Send one batch and tell its callers how it went."""
        raise NotImplementedError

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            batch = self._take_batch()
            if batch:
                self._send_batch(batch)
