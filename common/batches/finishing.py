"""Ending a batch: its output and error files, in input order, and its final
status, counts and usage (API.md section 6).

Safe to run again after a crash at any point: the files have ids derived from
the batch's, so a second run rewrites them, and the status moves only once.
"""

from __future__ import annotations

import uuid

from common.batches.files import FileStore
from common.batches.models import BatchRow
from common.batches.outcomes import Unanswered
from common.batches.progress import BatchProgress, LiveState
from common.batches.results import READ_CHUNK, Results
from common.batches.statuses import BatchStatus
from common.batches.store import BatchStore

_FILE_NAMESPACE = uuid.UUID("0b1f2a5e-5d8c-4b8e-9a51-3f6f1c2d7e90")
_FINAL = {
    None: BatchStatus.COMPLETED,
    Unanswered.BATCH_EXPIRED: BatchStatus.EXPIRED,
    Unanswered.BATCH_CANCELLED: BatchStatus.CANCELLED,
}


def output_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's ``output`` or ``error`` file (always the same)."""
    return f"file-{uuid.uuid5(_FILE_NAMESPACE, f'{batch_id}:{kind}').hex}"


class Finisher:
    """Writes a batch's files and ends it."""

    def __init__(
        self,
        batches: BatchStore,
        files: FileStore,
        progress: BatchProgress,
        results: Results,
    ) -> None:
        self.batches = batches
        self.files = files
        self.progress = progress
        self.results = results

    def finish(self, row: BatchRow, ending: Unanswered | None) -> None:
        """End a batch whose every request has ended (``ending``: why it stopped
        early, if it did)."""
        if ending != Unanswered.BATCH_CANCELLED:
            self.batches.move(row.id, [BatchStatus.IN_PROGRESS], BatchStatus.FINALIZING)
        out_id, err_id = (
            output_file_id(row.id, "output"),
            output_file_id(row.id, "error"),
        )
        written = {out_id: 0, err_id: 0}
        with (
            self.files.writer(row.owner, out_id, f"{row.id}_output.jsonl") as out,
            self.files.writer(row.owner, err_id, f"{row.id}_error.jsonl") as err,
        ):
            for start in range(0, row.total, READ_CHUNK):
                indexes = range(start, min(row.total, start + READ_CHUNK))
                for _, line, ok in self.results.lines(row.id, indexes, ending):
                    (out if ok else err)(line)
                    written[out_id if ok else err_id] += 1
        for file_id, count in written.items():
            if not count:
                self.files.discard(file_id)
        state = self.progress.state(row.id) or LiveState()
        self.progress.keep_for(row.id)
        self.batches.move(
            row.id,
            [BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING],
            _FINAL[ending],
            output_file_id=out_id if written[out_id] else None,
            error_file_id=err_id if written[err_id] else None,
            completed=state.completed,
            failed=state.failed,
            input_tokens=state.input_tokens,
            output_tokens=state.output_tokens,
        )
