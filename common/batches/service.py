"""Files and batches as the web routes see them (API.md section 6)."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import IO, Any

import orjson

from common.batches.files import FileStore
from common.batches.lines import CHAT_ENDPOINT
from common.batches.models import BatchRow, FilePurpose
from common.batches.progress import BatchProgress
from common.batches.results import READ_CHUNK, Results
from common.batches.statuses import ENDED, BatchStatus
from common.batches.store import COMPLETION_WINDOW, BatchStore
from common.errors import ConflictError, InvalidRequestError


def batch_object(row: BatchRow, progress: BatchProgress) -> dict[str, Any]:
    """OpenAI's batch object; a running batch's counts and usage live in Redis."""
    live = progress.state(row.id) if row.status not in ENDED else None
    counts = live or row
    tokens_in, tokens_out = counts.input_tokens, counts.output_tokens
    return {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "errors": row.errors,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": row.created_at,
        "in_progress_at": row.in_progress_at,
        "expires_at": row.expires_at,
        "finalizing_at": row.finalizing_at,
        "completed_at": row.completed_at,
        "failed_at": row.failed_at,
        "expired_at": row.expired_at,
        "cancelling_at": row.cancelling_at,
        "cancelled_at": row.cancelled_at,
        "request_counts": {
            "total": row.total,
            "completed": counts.completed,
            "failed": counts.failed,
        },
        "usage": {
            "input_tokens": tokens_in,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": tokens_out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": tokens_in + tokens_out,
        },
        "metadata": row.meta,
    }


class BatchService:
    """Creates, reads, lists and cancels batches, and streams their results."""

    def __init__(
        self,
        files: FileStore,
        batches: BatchStore,
        progress: BatchProgress,
        results: Results,
    ) -> None:
        self.files = files
        self.batches = batches
        self.progress = progress
        self.results = results

    def create(
        self,
        owner: str,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
    ) -> BatchRow:
        """A new batch, ``validating`` until the dispatcher takes it (at once).

        Raises:
            InvalidRequestError: an endpoint, window or file purpose llmq does
                not run.
            NotFoundError: no such input file for this key.
        """
        if endpoint != CHAT_ENDPOINT:
            raise InvalidRequestError(
                f"endpoint must be {CHAT_ENDPOINT}", param="endpoint"
            )
        if completion_window != COMPLETION_WINDOW:
            raise InvalidRequestError(
                f"completion_window must be {COMPLETION_WINDOW}",
                param="completion_window",
            )
        source = self.files.get(owner, input_file_id)
        if source.purpose != FilePurpose.BATCH:
            raise InvalidRequestError(
                "the input file's purpose must be 'batch'", param="input_file_id"
            )
        return self.batches.create(
            owner, input_file_id, endpoint, source.lines, metadata
        )

    def view(self, row: BatchRow) -> dict[str, Any]:
        return batch_object(row, self.progress)

    def cancel(self, owner: str, batch_id: str) -> BatchRow:
        """Cancel a batch: ``cancelling`` at once, ``cancelled`` once its running
        requests have stopped.

        Raises:
            ConflictError: the batch has ended or is writing its results.
        """
        row = self.batches.get(owner, batch_id)
        moved = self.batches.move(
            batch_id,
            [BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS],
            BatchStatus.CANCELLING,
        )
        if not moved and row.status != BatchStatus.CANCELLING:
            raise ConflictError(
                f"a batch that is {row.status} cannot be cancelled", param="batch_id"
            )
        return self.batches.get(owner, batch_id)

    def output(self, owner: str, batch_id: str, after: str | None) -> Iterator[bytes]:
        """The lines finished so far (API.md section 6): while the batch's live
        state is kept, in the order they finished; later, from its files, in
        input order. ``after``: the custom_id of the last line already seen.

        Raises:
            NotFoundError: no such batch for this key.
            InvalidRequestError: ``after`` names no finished request.
        """
        row = self.batches.get(owner, batch_id)
        start = self._index_of(row, after) if after else None
        if self.progress.state(row.id) is not None:
            return self._live(row, start)
        return self._from_files(row, start)

    def _index_of(self, row: BatchRow, custom_id: str) -> int:
        try:
            return self.files.custom_ids(row.input_file_id).index(custom_id)
        except (ValueError, FileNotFoundError):
            raise InvalidRequestError(
                f"the batch has no request {custom_id!r}", param="after"
            ) from None

    def _live(self, row: BatchRow, after: int | None) -> Iterator[bytes]:
        order = self.progress.done(row.id)
        position = 0
        if after is not None:
            if after not in order:
                raise InvalidRequestError(
                    "that request has not finished yet", param="after"
                )
            position = order.index(after) + 1
        return self._lines(row.id, order[position:])

    def _lines(self, batch_id: str, order: list[int]) -> Iterator[bytes]:
        for start in range(0, len(order), READ_CHUNK):
            chunk = order[start : start + READ_CHUNK]
            for _, line, _ok in self.results.lines(batch_id, chunk, None):
                yield line

    def _from_files(self, row: BatchRow, after: int | None) -> Iterator[bytes]:
        index = {c: i for i, c in enumerate(self.files.custom_ids(row.input_file_id))}
        streams = [
            self.files.path(file_id).open("rb")
            for file_id in (row.output_file_id, row.error_file_id)
            if file_id
        ]
        return _merged(streams, index, -1 if after is None else after)


def _merged(
    streams: Sequence[IO[bytes]], index: dict[str, int], after: int
) -> Iterator[bytes]:
    """The lines of ``streams`` (each in input order) in input order, past ``after``."""

    def keyed(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
        with stream:
            for line in stream:
                yield index.get(orjson.loads(line).get("custom_id"), -1), line

    for position, line in heapq.merge(*(keyed(s) for s in streams)):
        if position > after:
            yield line
