"""Migrations (common/db/migrate.py) on SQLite and PostgreSQL: they make what the
models declare, adopt a database made before them, and run once however many
processes start together."""

from __future__ import annotations

import datetime as dt
import importlib
import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import common
from common.accounts.models import ApiKey
from common.db.base import Base
from common.db.engine import make_engine
from common.db.migrate import (
    BASELINE_REVISION,
    LOCK_SUFFIX,
    alembic_config,
    head_revision,
    migrate,
    migration_lock,
)
from tests.conftest import ROOT, wait_until
from tests.databases import fresh_postgres

#: Processes migrating one fresh database at once, as web and workers start.
PROCESSES = 4
#: Statements that would change a database: a migration that is a no-op sends none.
WRITES = ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database with no tables at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'llmq.sqlite3'}"
        return
    with fresh_postgres("llmq_migrations") as fresh:
        yield fresh


@pytest.fixture
def engine(url: str) -> Iterator[sqlalchemy.Engine]:
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _revision(engine: sqlalchemy.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _every_table() -> sqlalchemy.MetaData:
    """``Base.metadata`` with every module of common/ imported: a model whose
    module nothing here imports is compared too, not silently left out."""
    for module in pkgutil.walk_packages(common.__path__, "common."):
        importlib.import_module(module.name)
    return Base.metadata


def _differences(engine: sqlalchemy.Engine) -> list[Any]:
    """What autogenerate would change to make the database match the models."""
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), _every_table()))


def test_a_fresh_database_migrates_to_exactly_what_the_models_declare(
    engine: sqlalchemy.Engine,
) -> None:
    """A model changed without a migration (or the reverse) fails here."""
    migrate(engine)
    assert _revision(engine) == head_revision()
    assert _differences(engine) == []


#: The api_keys table as create_all made it before migrations (and revision 0001
#: has it): money as exact decimals.
_OLD = sqlalchemy.MetaData()
OLD_API_KEYS = sqlalchemy.Table(
    "api_keys",
    _OLD,
    sqlalchemy.Column("id", sqlalchemy.String(40), primary_key=True),
    sqlalchemy.Column("name", sqlalchemy.String(200), nullable=False),
    sqlalchemy.Column(
        "key_hash", sqlalchemy.String(64), nullable=False, unique=True, index=True
    ),
    sqlalchemy.Column("hint", sqlalchemy.String(16), nullable=False),
    sqlalchemy.Column("created_at", sqlalchemy.DateTime(), nullable=False),
    sqlalchemy.Column("revoked_at", sqlalchemy.DateTime(), nullable=True),
    sqlalchemy.Column("expires_at", sqlalchemy.DateTime(), nullable=True),
    sqlalchemy.Column("balance", sqlalchemy.Numeric(18, 6), nullable=True),
    sqlalchemy.Column("daily_free", sqlalchemy.Numeric(18, 6), nullable=True),
    sqlalchemy.Column("rpm", sqlalchemy.Integer(), nullable=True),
    sqlalchemy.Column("tpm", sqlalchemy.Integer(), nullable=True),
    sqlalchemy.Column("concurrency", sqlalchemy.Integer(), nullable=True),
    sqlalchemy.Column("models", sqlalchemy.JSON(), nullable=True),
)


def test_a_database_made_before_migrations_is_adopted_with_its_rows(
    engine: sqlalchemy.Engine,
) -> None:
    _OLD.create_all(engine)  # the old way
    row = {
        "id": "key_old",
        "name": "made before migrations",
        "key_hash": "0" * 64,
        "hint": "llmq-...abcd",
        "created_at": dt.datetime(2026, 1, 2, 3, 4, 5),
        "models": ["sim-model"],
    }
    money = {"balance": Decimal("12345.678901"), "daily_free": Decimal("0.5")}
    unmetered = {**row, "id": "key_free", "key_hash": "1" * 64}
    none = {"balance": None, "daily_free": None}
    with engine.begin() as conn:
        conn.execute(
            sqlalchemy.insert(OLD_API_KEYS), [{**row, **money}, {**unmetered, **none}]
        )
    migrate(engine)
    assert _revision(engine) == head_revision()
    with engine.connect() as conn:
        kept = (
            conn.execute(
                sqlalchemy.select(ApiKey.__table__).order_by(ApiKey.__table__.c.id)
            )
            .mappings()
            .all()
        )
    assert [{k: r[k] for k in row} for r in kept] == [unmetered, row]
    # The money carried over exactly, as micro-units; no balance stays none.
    assert (kept[1]["balance_micro"], kept[1]["daily_free_micro"]) == (
        12_345_678_901,
        500_000,
    )
    assert (kept[0]["balance_micro"], kept[0]["daily_free_micro"]) == (None, None)
    assert _differences(engine) == []


def test_migrating_a_migrated_database_writes_nothing(
    engine: sqlalchemy.Engine,
) -> None:
    migrate(engine)
    sent: list[str] = []

    @sqlalchemy.event.listens_for(engine, "before_cursor_execute")
    def _record(*args: Any) -> None:
        sent.append(args[2])

    migrate(engine)
    assert sent, "the second migrate should still read the revision"
    assert not [s for s in sent if s.lstrip().upper().startswith(WRITES)]
    assert _revision(engine) == head_revision()


def test_the_baseline_downgrades_and_upgrades_again(
    engine: sqlalchemy.Engine,
) -> None:
    migrate(engine)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert not sqlalchemy.inspect(engine).has_table("api_keys")
    migrate(engine)
    assert _revision(engine) == head_revision() and _differences(engine) == []


def _waiting_for_the_lock(conn: sqlalchemy.Connection) -> int:
    """How many processes wait for ``migration_lock`` that ``conn`` holds."""
    if conn.dialect.name == "postgresql":
        return int(
            conn.execute(
                sqlalchemy.text(
                    "select count(*) from pg_locks where locktype = 'advisory'"
                    " and not granted and database = (select oid from pg_database"
                    " where datname = current_database())"
                )
            ).scalar_one()
        )
    assert conn.engine.url.database
    inode = os.stat(conn.engine.url.database + LOCK_SUFFIX).st_ino
    locks = Path("/proc/locks").read_text().splitlines()
    return sum(" -> FLOCK " in line and f":{inode} " in line for line in locks)


def test_processes_migrating_a_fresh_database_at_once_all_succeed(
    url: str, engine: sqlalchemy.Engine
) -> None:
    """Each runs ``python -m common.db.migrate``. They start while the test holds
    the lock, which it lets go once all of them wait for it: they race together."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env["DATABASE_URL"] = url
    procs: list[subprocess.Popen[str]] = []
    try:
        with migration_lock(engine) as conn:
            procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "common.db.migrate"],
                    cwd=ROOT,
                    env=env,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for _ in range(PROCESSES)
            ]
            wait_until(
                lambda: _waiting_for_the_lock(conn) == PROCESSES,
                timeout=30,
                what="every process to wait for the migration lock",
            )
        logs = [(p.communicate(timeout=60)[1], p.returncode) for p in procs]
    finally:
        for proc in procs:
            proc.kill()  # nothing, once it has exited
    assert [code for _, code in logs] == [0] * PROCESSES, logs
    ran = [log for log, _ in logs if f"Running upgrade  -> {BASELINE_REVISION}" in log]
    assert len(ran) == 1, logs
    assert _revision(engine) == head_revision()
    assert _differences(engine) == []
