"""A batch's statuses (API.md section 6): shared by the server and the ``llmq``
CLI, so nothing here may import more than the standard library."""

from __future__ import annotations

import enum


class BatchStatus(enum.StrEnum):
    """OpenAI's batch statuses."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


#: Statuses a batch never leaves.
ENDED = frozenset(
    {
        BatchStatus.FAILED,
        BatchStatus.COMPLETED,
        BatchStatus.EXPIRED,
        BatchStatus.CANCELLED,
    }
)
#: Statuses the dispatcher works on.
ACTIVE = frozenset(
    {
        BatchStatus.VALIDATING,
        BatchStatus.IN_PROGRESS,
        BatchStatus.FINALIZING,
        BatchStatus.CANCELLING,
    }
)
