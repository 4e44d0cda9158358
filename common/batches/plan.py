"""What the dispatcher keeps in memory about one running batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from common.batches.models import BatchRow
from common.batches.outcomes import Unanswered
from common.batches.reader import InputReader
from common.batches.statuses import BatchStatus
from common.batches.submit import Prepared


@dataclass
class Plan:
    """The dispatcher's working state for one batch (rebuilt after a restart)."""

    row: BatchRow
    reader: InputReader
    running: set[int] = field(default_factory=set)
    pending: Prepared | None = None
    exhausted: bool = False
    #: Jobs of a stopping batch already told to stop.
    stopped: set[str] = field(default_factory=set)
    #: Jobs whose task was pushed again (common/batches/recovery.py).
    requeued: set[str] = field(default_factory=set)

    @property
    def ending(self) -> Unanswered | None:
        """Why the batch stops early, if it does."""
        if self.row.status == BatchStatus.CANCELLING:
            return Unanswered.BATCH_CANCELLED
        if self.row.status == BatchStatus.IN_PROGRESS and time.time() >= (
            self.row.expires_at
        ):
            return Unanswered.BATCH_EXPIRED
        return None
