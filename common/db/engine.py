"""The relational database's engine, and creating its schema."""

from __future__ import annotations

import random
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError

from common.db.base import Base

#: Tries at creating the schema while other processes create it too.
SCHEMA_ATTEMPTS = 5
#: Seconds to wait for a database connection before answering 503.
CONNECT_TIMEOUT_SECONDS = 2


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs (SQLAlchemy assumes psycopg2)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their folder and WAL mode."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 10}
        )

        @event.listens_for(engine, "connect")
        def _wal(conn, _record) -> None:  # type: ignore[no-untyped-def]
            conn.execute("PRAGMA journal_mode=WAL")

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
    )


def create_schema(engine: Engine) -> None:
    """Create missing tables (the schema is additive until migrations are needed).

    Web processes start together on a fresh database: when another one creates a
    table between our check and our CREATE, ours fails with "already exists"
    (or SQLite is briefly locked); checking again then finds the table.
    """
    # Registers the tables on Base; imported here, since they import the base.
    from common.accounts import models  # noqa: F401

    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            Base.metadata.create_all(engine)
            return
        except DatabaseError:
            if attempt == SCHEMA_ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0.01, 0.1))
