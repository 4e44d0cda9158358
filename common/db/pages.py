"""One page of a key's rows, newest first, as OpenAI's list routes page them."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Engine, select, tuple_
from sqlalchemy.orm import Session

Row = TypeVar("Row")


def newest_first(
    engine: Engine,
    model: type[Row],
    owner: str,
    limit: int,
    after: str | None,
    *where: ColumnElement[bool],
) -> tuple[list[Row], bool]:
    """Up to ``limit`` of ``owner``'s rows of ``model`` (a table with ``owner``,
    ``created_at`` and ``id``), newest first, after the row ``after`` (another
    key's, or none, gives an empty page); and whether more follow."""
    table: Any = model
    query = select(table).where(table.owner == owner, *where)
    with Session(engine) as session:
        if after:
            last = session.get(table, after)
            if last is None or last.owner != owner:
                return [], False
            query = query.where(
                tuple_(table.created_at, table.id) < tuple_(last.created_at, last.id)
            )
        query = query.order_by(table.created_at.desc(), table.id.desc())
        rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit
