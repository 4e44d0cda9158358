"""Alembic's environment: migrations run on the connection ``migrate`` passes in.

There is no alembic.ini and no offline mode: ``common.db.migrate`` is the one way
in, so that every migration runs under its lock and in its transaction.
"""

from alembic import context

from common.accounts import (
    ledger,  # noqa: F401  (registers ledger, job_usage)
    models,  # noqa: F401  (registers api_keys on Base)
)
from common.batches import models as batch_models  # noqa: F401  (files, batches)
from common.db.base import Base
from common.jobs import history  # noqa: F401  (registers jobs on Base)

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite alters a table only by copying it: batch mode does the copying.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
