"""The ``batches`` table: creating, reading, listing and moving batches.

Every status change is a compare-and-set on the row (``move``), so the web's
cancel and the dispatcher's steps never overwrite each other.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from common.batches.models import BatchRow
from common.batches.statuses import ACTIVE, BatchStatus
from common.db.pages import newest_first
from common.errors import NotFoundError

#: The one completion window a batch may ask for, and its length.
COMPLETION_WINDOW = "24h"
WINDOW_SECONDS = 24 * 3600


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


class BatchStore:
    """Batch rows in the relational database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(
        self,
        owner: str,
        input_file_id: str,
        endpoint: str,
        total: int,
        metadata: dict[str, str] | None,
    ) -> BatchRow:
        created = int(time.time())
        row = BatchRow(
            id=new_batch_id(),
            owner=owner,
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=COMPLETION_WINDOW,
            status=BatchStatus.VALIDATING,
            meta=metadata,
            total=total,
            completed=0,
            failed=0,
            input_tokens=0,
            output_tokens=0,
            created_at=created,
            expires_at=created + WINDOW_SECONDS,
        )
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(row)
            session.commit()
        return row

    def row(self, batch_id: str) -> BatchRow | None:
        with Session(self.engine) as session:
            return session.get(BatchRow, batch_id)

    def get(self, owner: str, batch_id: str) -> BatchRow:
        """The owner's batch. Raises NotFoundError for others' batches as for none."""
        row = self.row(batch_id)
        if row is None or row.owner != owner:
            raise NotFoundError(f"no batch {batch_id!r}", param="batch_id")
        return row

    def page(
        self, owner: str, limit: int, after: str | None
    ) -> tuple[list[BatchRow], bool]:
        """The owner's batches, newest first, after the batch ``after``."""
        return newest_first(self.engine, BatchRow, owner, limit, after)

    def active(self) -> list[BatchRow]:
        """Every batch the dispatcher works on, oldest first."""
        query = (
            select(BatchRow)
            .where(BatchRow.status.in_(list(ACTIVE)))
            .order_by(BatchRow.created_at, BatchRow.id)
        )
        with Session(self.engine) as session:
            return list(session.scalars(query))

    def move(
        self,
        batch_id: str,
        expected: Iterable[BatchStatus],
        status: BatchStatus,
        **fields: Any,
    ) -> bool:
        """Set ``status`` (and its ``<status>_at`` time, and ``fields``) if the
        batch is in one of ``expected``; whether it was."""
        stamp = f"{status.value}_at"
        values: dict[str, Any] = {"status": status, **fields}
        if stamp in BatchRow.__table__.columns:
            values[stamp] = int(time.time())
        with self.engine.begin() as conn:
            done = conn.execute(
                update(BatchRow)
                .where(BatchRow.id == batch_id, BatchRow.status.in_(list(expected)))
                .values(**values)
            )
        return bool(done.rowcount)
