"""The output lines of a batch's finished requests, read from where they are:
the refused hash for requests that never ran, else their jobs (in Redis while
live or in the replay window, else in the database)."""

from __future__ import annotations

from collections.abc import Sequence

from common.batches import outcomes
from common.batches.outcomes import Unanswered
from common.batches.progress import BatchProgress, job_id_for
from common.jobs.history import JobHistory
from common.jobs.model import JobRecord, JobStatus
from common.jobs.store import JobStore

#: Requests read per round trip.
READ_CHUNK = 500


class Results:
    """Reads finished requests' output lines."""

    def __init__(
        self, progress: BatchProgress, store: JobStore, history: JobHistory
    ) -> None:
        self.progress = progress
        self.store = store
        self.history = history

    def jobs(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        """Those of ``job_ids`` that exist, from Redis, else from the database."""
        found = self.store.get_many(job_ids)
        missing = [job_id for job_id in job_ids if job_id not in found]
        found.update(self.history.get_many(missing))
        return found

    def lines(
        self, batch_id: str, indexes: Sequence[int], ending: Unanswered | None
    ) -> list[tuple[int, bytes, bool]]:
        """``(index, output line, succeeded)`` of each finished request of
        ``indexes`` (one not found is left out), in the order given."""
        out: list[tuple[int, bytes, bool]] = []
        for start in range(0, len(indexes), READ_CHUNK):
            chunk = list(indexes[start : start + READ_CHUNK])
            refused = self.progress.refused(batch_id, chunk)
            ids = {i: job_id_for(batch_id, i) for i in chunk if i not in refused}
            jobs = self.jobs(list(ids.values()))
            for index in chunk:
                if index in refused:
                    out.append((index, refused[index], False))
                    continue
                job = jobs.get(ids[index])
                if job is None or not job.terminal:
                    continue
                custom_id = str((job.metadata or {}).get("custom_id", ""))
                line = outcomes.of_job(job, custom_id, ending)
                out.append((index, line, job.status == JobStatus.SUCCEEDED))
        return out
