"""Bringing the database's schema to the newest migration (Alembic).

``python -m common.db.migrate`` runs it before the processes start (the Procfile's
``release`` line, ``make run``); the web runs it at start as well, so a database
nobody migrated still works. Processes starting together take turns under a lock,
and whoever comes second finds the schema at head and does nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, func, inspect, select

from common.config import load_settings
from common.db.engine import make_engine

#: The revisions (common/db/migrations), found as package data wherever installed.
SCRIPT_LOCATION = "common.db:migrations"
#: The revision creating what ``create_all`` made before there were migrations.
BASELINE_REVISION = "0001"
#: This table without ``alembic_version``: a database ``create_all`` made back then.
BASELINE_TABLE = "api_keys"
#: On SQLite, the file locked beside the database is named the database's + this.
LOCK_SUFFIX = ".migrate.lock"
#: The PostgreSQL advisory lock every migrating process takes: any fixed number.
ADVISORY_LOCK_KEY = 0x6C6C6D71  # "llmq"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's settings, with no alembic.ini; env.py migrates ``connection``."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    """The newest revision in common/db/migrations."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def migrate(engine: Engine) -> None:
    """Upgrade ``engine``'s database to the newest revision, in one transaction
    where the database allows (PostgreSQL): a failed migration leaves nothing.

    A database made by ``create_all`` before migrations (its tables, no
    ``alembic_version``) is first stamped at the baseline, whose tables it has.
    """
    with migration_lock(engine) as conn:
        current = MigrationContext.configure(conn).get_current_heads()
        if current == (head_revision(),):
            return
        config = alembic_config(conn)
        if not current and inspect(conn).has_table(BASELINE_TABLE):
            command.stamp(config, BASELINE_REVISION)
        command.upgrade(config, "head")
        conn.commit()


@contextlib.contextmanager
def migration_lock(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that no other process migrating ``engine``'s
    database holds at the same time (web and worker processes start together).

    On PostgreSQL a transaction-level advisory lock: the commit (or rollback, or a
    dropped connection) releases it, so it can never outlive the migration on a
    pooled connection. On SQLite an exclusive flock on a file beside the database,
    which the kernel releases when the process dies; ``:memory:`` is private.
    """
    with contextlib.ExitStack() as stack:
        database = engine.url.database
        if engine.dialect.name == "sqlite" and database and database != ":memory:":
            stack.enter_context(_file_lock(Path(database + LOCK_SUFFIX)))
        conn = stack.enter_context(engine.connect())
        if engine.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
        yield conn


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Held until the file is closed (or the process dies)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def main() -> None:
    """Migrate the database of ``DATABASE_URL``, logging each revision applied."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    engine = make_engine(load_settings().database_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
