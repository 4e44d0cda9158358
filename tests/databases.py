"""The tests' PostgreSQL: where it is, and databases made for one test alone.

The CI machine (and a developer's) runs PostgreSQL on loopback with trust auth
and a ``test`` database; ``LLMQ_TEST_POSTGRES_URL`` points elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from common.db.engine import make_engine, normalize_url

POSTGRES_URL = os.environ.get(
    "LLMQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def postgres_database(name: str) -> str:
    """The URL of database ``name`` on the tests' PostgreSQL server."""
    url = make_url(normalize_url(POSTGRES_URL)).set(database=name)
    return url.render_as_string(hide_password=False)


@contextlib.contextmanager
def fresh_postgres(prefix: str = "llmq_test") -> Iterator[str]:
    """The URL of a new, empty database, dropped afterwards: a test's tables
    stay apart from every other test's."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = make_engine(postgres_database("postgres")).execution_options(
        isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'create database "{name}"'))
    except sqlalchemy.exc.OperationalError as exc:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_URL} "
            f"(set LLMQ_TEST_POSTGRES_URL): {exc}"
        )
    try:
        yield postgres_database(name)
    finally:
        with admin.connect() as conn:
            conn.execute(
                sqlalchemy.text(f'drop database if exists "{name}" with (force)')
            )
        admin.dispose()
