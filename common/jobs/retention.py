"""Redis holds live work, the database holds history: moving finished jobs.

The worker's launcher runs one retention process (workers/retention.py) beside
its Celery workers, so the database's I/O and the compaction's CPU never stall a
worker's streams. A job that ends joins
the unwritten-history set in the script that ends it (lua/lib_transition.lua).
It takes such jobs in batches (lua/history_claim.lua: a claim a writer
that dies lets lapse), writes each with its compacted log to the database in one
transaction (common/jobs/history.py, idempotent), and only once that is
committed moves them to the written set, due to be dropped from Redis at the end
of their replay window (``LLMQ_EVENTS_TTL_SECONDS`` after they finished). A
database outage therefore keeps jobs in Redis past their window, never loses
them; the record's own time to live (``LLMQ_JOB_TTL_SECONDS``) is the last
resort, as long as the database would have kept the job anyway. It also
drops the Redis copies that are due and purges the database of jobs older than
``LLMQ_JOB_TTL_SECONDS``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import cast

import redis
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from common.accounts.billing import Billing, OpenHold
from common.accounts.settlement import settle
from common.jobs.compaction import compact, generated_text
from common.jobs.events import events_of
from common.jobs.history import JobHistory, row_values
from common.jobs.model import JobRecord, decode_record
from common.redis import keys, scripts

log = logging.getLogger(__name__)

#: Most jobs one database transaction writes.
WRITE_BATCH = 200
#: Most Redis copies dropped by one call.
DROP_BATCH = 1000
#: A claim's life: a writer that has not confirmed by then has died.
CLAIM_MS = 60_000
#: When a database write failed, how soon its jobs are tried again.
RETRY_MS = 2_000
#: How often the thread looks for work when there is none.
POLL_SECONDS = 0.5
#: How often the database is purged of expired jobs, and holds reconciled.
PURGE_SECONDS = 60.0
#: A hold this old whose job exists nowhere was taken by a web process that died
#: before storing the job: it is released.
ORPHAN_HOLD_SECONDS = 600


class Retention:
    """Moves finished jobs to the database and drops their Redis copies in time."""

    def __init__(
        self,
        client: redis.Redis,
        history: JobHistory,
        events_ttl_seconds: int,
        job_ttl_seconds: int,
        billing: Billing | None = None,
    ) -> None:
        """``billing``: to release holds whose job was never stored."""
        self.billing = billing
        self.redis = client
        self.history = history
        self.events_ttl_ms = events_ttl_seconds * 1000
        self.job_ttl_seconds = job_ttl_seconds
        self._claim = scripts.register(client, "history_claim")
        self._purged_at = 0.0

    def run_forever(self, prepare: Callable[[], None]) -> None:
        """Work until the process ends, once ``prepare`` (the database's
        migration) has succeeded: until then, and whenever Redis or the
        database fails, finished jobs wait in Redis."""
        prepared = False
        while True:
            try:
                if not prepared:
                    prepare()
                    prepared = True
                self.run_once()
            except (redis.RedisError, SQLAlchemyError) as exc:
                log.warning("retention: %s; will retry", exc)
            time.sleep(POLL_SECONDS)

    def run_once(self) -> None:
        """Write what is unwritten, drop what is due, purge now and then."""
        while self.write_history() == WRITE_BATCH:
            pass
        while self.drop_expired() == DROP_BATCH:
            pass
        if time.monotonic() - self._purged_at > PURGE_SECONDS:
            self._purged_at = time.monotonic()
            if self.job_ttl_seconds:
                self.history.purge(time.time() - self.job_ttl_seconds)
            self.release_orphan_holds(ORPHAN_HOLD_SECONDS)

    def release_orphan_holds(self, older_than_seconds: float) -> int:
        """Give back the holds of jobs that exist neither in Redis nor in the
        database (their web process died between the hold and the job); how many."""
        if self.billing is None:
            return 0
        held = list(self.billing.stale_holds(older_than_seconds))
        if not held:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for job_id in held:
            pipe.exists(keys.job_key(job_id))
        live = pipe.execute()
        orphans = [
            job_id
            for job_id, in_redis in zip(held, live, strict=True)
            if not in_redis and self.history.get(job_id) is None
        ]
        for job_id in orphans:
            self.billing.release(job_id)
        return len(orphans)

    def write_history(self) -> int:
        """Write one batch of finished jobs; how many were taken."""
        ids = [
            i.decode()
            for i in cast(
                list[bytes],
                self._claim(
                    keys=[keys.HISTORY_UNWRITTEN_KEY], args=[WRITE_BATCH, CLAIM_MS]
                ),
            )
        ]
        if not ids:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(keys.job_key(job_id))
            pipe.xrange(keys.events_key(job_id))
        replies = pipe.execute()
        jobs: list[JobRecord] = []
        rows = []
        charged: list[tuple[JobRecord, str]] = []
        for raw, entries in zip(replies[::2], replies[1::2], strict=True):
            if raw:
                job = decode_record(raw)
                jobs.append(job)
                events = compact(events_of(entries))
                rows.append(row_values(job, events))
                if job.price is not None:
                    charged.append((job, generated_text(events)))
        holds = (
            self.billing.open_holds([job.id for job, _ in charged])
            if self.billing is not None
            else {}
        )
        ended: list[tuple[str, OpenHold, tuple[int, int]]] = []

        def settle_all(conn: Connection) -> None:
            for job, text in charged:
                hold = holds.get(job.id)
                if hold is not None:  # else ended: settled, or given back
                    ended.append((job.id, hold, settle(conn, job, text, hold)))

        try:
            self.history.write(rows, within=settle_all)
        except SQLAlchemyError:
            retry = int(time.time() * 1000) + RETRY_MS
            self.redis.zadd(
                keys.HISTORY_UNWRITTEN_KEY, dict.fromkeys(ids, retry), xx=True
            )
            raise
        if self.billing is not None:  # the holds end once the ledger has them
            for job_id, hold, (cost, free_back) in ended:
                self.billing.end_hold(job_id, hold, cost, free_back)
        self._written(ids, jobs)
        return len(ids)

    def _written(self, ids: list[str], jobs: list[JobRecord]) -> None:
        """Note that ``jobs`` are in the database (the rest of ``ids`` vanished)."""
        now_ms = int(time.time() * 1000)
        drops = {
            f"{job.id} {job.owner}": max(
                now_ms, int((job.finished_at or 0) * 1000) + self.events_ttl_ms
            )
            for job in jobs
        }
        # Scheduled before it is taken off the unwritten set: a writer dying in
        # between leaves a job in both, which the next writer settles, never in
        # neither (which would keep its Redis copy for good).
        pipe = self.redis.pipeline(transaction=False)
        if drops:
            pipe.zadd(keys.HISTORY_WRITTEN_KEY, drops)
        pipe.zrem(keys.HISTORY_UNWRITTEN_KEY, *ids)
        pipe.execute()

    def drop_expired(self) -> int:
        """Drop the Redis copies whose window has passed; how many went."""
        due = cast(
            list[bytes],
            self.redis.zrangebyscore(
                keys.HISTORY_WRITTEN_KEY,
                "-inf",
                int(time.time() * 1000),
                start=0,
                num=DROP_BATCH,
            ),
        )
        if not due:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for member in due:
            job_id, owner = member.decode().split(" ", 1)
            pipe.delete(keys.job_key(job_id), keys.events_key(job_id))
            pipe.zrem(keys.owner_jobs_key(owner), job_id)
        pipe.zrem(keys.HISTORY_WRITTEN_KEY, *due)
        pipe.execute()
        return len(due)
