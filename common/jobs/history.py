"""Finished jobs in the relational database: the ``jobs`` table and its store.

Redis holds a job while it is live and for the replay window after it ends
(common/jobs/retention.py moves it here and then lets Redis drop it); the
database holds it for ``LLMQ_JOB_TTL_SECONDS`` after that, with its event log
compacted (common/jobs/compaction.py). A row is written once: a job is final
when it gets here, so a second write of the same job (a writer that died before
telling Redis, a replay) changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    Double,
    Engine,
    Index,
    Integer,
    String,
    delete,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from common.db.base import Base
from common.jobs.compaction import Compacted
from common.jobs.events import Event
from common.jobs.lifecycle import job_object
from common.jobs.model import EventType, JobRecord
from common.jsoncodec import dumps

#: Most rows one purge deletes (it runs again until none are left).
PURGE_BATCH = 1000


class JobRow(Base):
    """One finished job."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(255))
    provider: Mapped[str] = mapped_column(String(255))
    priority: Mapped[str] = mapped_column(String(16))
    #: ``created_at`` in whole ms, as Redis orders a key's jobs (the list's order).
    created_ms: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Double)
    started_at: Mapped[float | None] = mapped_column(Double)
    finished_at: Mapped[float] = mapped_column(Double, index=True)
    attempts: Mapped[int] = mapped_column(Integer)
    result: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    error: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    usage: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    meta: Mapped[Any] = mapped_column(
        "metadata", JSON(none_as_null=True), nullable=True
    )
    #: The compacted event log: ``[id, type, data]`` each, data null for ``done``.
    events: Mapped[Any] = mapped_column(JSON)

    __table_args__ = (Index("ix_jobs_owner_created", "owner", "created_ms", "id"),)


def created_ms(job: JobRecord) -> int:
    """Where a job stands in its key's list (newest first, then by id)."""
    return int(job.created_at * 1000)


def row_values(job: JobRecord, events: Sequence[Compacted]) -> dict[str, Any]:
    """The row of a finished job and its compacted events, by column name."""
    return {
        "id": job.id,
        "owner": job.owner,
        "status": job.status,
        "model": job.model,
        "provider": job.provider,
        "priority": job.priority,
        "created_ms": created_ms(job),
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at or job.created_at,
        "attempts": job.attempts,
        "result": job.result,
        "error": job.error,
        "usage": job.usage,
        "metadata": job.metadata,
        "events": [list(event) for event in events],
    }


def _record(row: JobRow) -> JobRecord:
    return JobRecord(
        id=row.id,
        owner=row.owner,
        status=row.status,
        model=row.model,
        provider=row.provider,
        priority=row.priority,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        deadline_at=None,
        attempts=row.attempts,
        request={},
        result=row.result,
        error=row.error,
        usage=row.usage,
        metadata=row.meta,
        cancel_requested=False,
    )


class JobHistory:
    """Writes, reads, lists and purges finished jobs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write(
        self,
        rows: Sequence[dict[str, Any]],
        within: Callable[[Connection], None] | None = None,
    ) -> None:
        """Insert the rows in one transaction; a job already there is left as it is.

        ``within`` runs in the same transaction (settling the jobs' holds), so
        it is committed exactly when the rows are.
        """
        if not rows:
            return
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(JobRow.__table__).on_conflict_do_nothing(
            index_elements=["id"]
        )
        with self.engine.begin() as conn:
            conn.execute(insert, list(rows))
            if within is not None:
                within(conn)

    def get(self, job_id: str) -> JobRecord | None:
        with Session(self.engine) as session:
            row = session.get(JobRow, job_id)
            return None if row is None else _record(row)

    def get_many(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        """Those of ``job_ids`` the database holds, by id."""
        if not job_ids:
            return {}
        with Session(self.engine) as session:
            rows = session.scalars(select(JobRow).where(JobRow.id.in_(job_ids)))
            return {row.id: _record(row) for row in rows}

    def events(self, job_id: str, after: int) -> list[Event]:
        """The job's compacted events with id > ``after`` (none for no such job)."""
        with Session(self.engine) as session:
            row = session.get(JobRow, job_id)
            if row is None:
                return []
            done = dumps(job_object(_record(row))).encode()
            return [
                Event(
                    number,
                    kind,
                    done if kind == EventType.DONE else dumps(data).encode(),
                )
                for number, kind, data in row.events
                if number > after
            ]

    def page(
        self,
        owner: str,
        status: str | None,
        before: tuple[int, str] | None,
        limit: int,
    ) -> list[JobRecord]:
        """Up to ``limit`` of ``owner``'s jobs, newest first, after the cursor
        ``before`` (``(created_ms, id)`` of the last one seen)."""
        query = select(JobRow).where(JobRow.owner == owner)
        if status is not None:
            query = query.where(JobRow.status == status)
        if before is not None:
            query = query.where(tuple_(JobRow.created_ms, JobRow.id) < tuple_(*before))
        query = query.order_by(JobRow.created_ms.desc(), JobRow.id.desc()).limit(limit)
        with Session(self.engine) as session:
            return [_record(row) for row in session.scalars(query)]

    def purge(self, finished_before: float) -> int:
        """Delete jobs that finished before ``finished_before``; how many went."""
        gone = 0
        while True:
            with self.engine.begin() as conn:
                ids = conn.scalars(
                    select(JobRow.id)
                    .where(JobRow.finished_at < finished_before)
                    .limit(PURGE_BATCH)
                ).all()
                if ids:
                    conn.execute(delete(JobRow).where(JobRow.id.in_(ids)))
            gone += len(ids)
            if len(ids) < PURGE_BATCH:
                return gone
