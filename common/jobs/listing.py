"""A key's jobs, newest first, from Redis and the database together.

Redis holds a key's live jobs and those in their replay window; the database
holds every finished job once written, and a job leaves Redis only after that.
So a page read from Redis first and then from the database misses nothing (a
job gone from Redis before the first read is already in the database) and may
see a finished job twice (kept once). Both are ordered by ``(created ms, id)``
descending, the order of the Redis index.
"""

from __future__ import annotations

from common.jobs.history import JobHistory, created_ms
from common.jobs.model import JobRecord
from common.jobs.store import JobStore


def merged_page(
    store: JobStore,
    history: JobHistory,
    owner: str,
    status: str | None,
    before: tuple[int, str] | None,
    count: int,
) -> list[JobRecord]:
    """Up to ``count`` of ``owner``'s jobs (with ``status``) after the cursor."""
    live = _from_redis(store, owner, status, before, count)
    kept = history.page(owner, status, before, count)
    seen = {job.id for job in live}
    merged = live + [job for job in kept if job.id not in seen]
    merged.sort(key=lambda job: (created_ms(job), job.id), reverse=True)
    return merged[:count]


def _from_redis(
    store: JobStore,
    owner: str,
    status: str | None,
    before: tuple[int, str] | None,
    count: int,
) -> list[JobRecord]:
    found: list[JobRecord] = []
    while len(found) < count:
        entries = store.list_ids(owner, before, count)
        for _, job_id in entries:
            job = store.get(job_id)
            # No record: dropped since the index was read, so in the database.
            if job and (status is None or job.status == status):
                found.append(job)
        if len(entries) < count:
            break
        before = entries[-1]
    return found
