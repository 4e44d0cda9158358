"""``python -m workers.batches``: the batch dispatcher (common/batches/dispatcher.py).

Run by the worker's launcher beside its Celery workers and the retention
process, in a process of its own with no gevent: it is one loop of short Redis
and database calls. Any number may run, on any machines: one leads at a time,
the others stand by to take over within seconds of its death.
"""

from __future__ import annotations

import logging
import time

import redis
from sqlalchemy.exc import SQLAlchemyError

from common.accounts.billing import Billing
from common.accounts.store import KeyStore
from common.batches.dispatcher import Dispatcher
from common.batches.files import FileStore
from common.batches.finishing import Finisher
from common.batches.progress import BatchProgress
from common.batches.recovery import Collector
from common.batches.results import Results
from common.batches.store import BatchStore
from common.batches.submit import LineSubmitter
from common.config import Settings, load_settings
from common.db.engine import make_engine
from common.db.migrate import migrate
from common.jobs.history import JobHistory
from common.jobs.store import JobStore
from common.limits import Limiter
from common.redis.client import connect
from workers.broker.messages import TaskMessages
from workers.celery_app import make_celery

log = logging.getLogger("workers.batches")


def build(settings: Settings) -> Dispatcher:
    """The dispatcher and everything it uses, from the settings."""
    engine = make_engine(settings.database_url)
    client = connect(settings.redis_url, settings.redis_timeout_seconds)
    store = JobStore(client, settings.job_ttl_seconds)
    history = JobHistory(engine)
    limiter = Limiter(client)
    keys = KeyStore(engine, client)
    progress = BatchProgress(client)
    files = FileStore(
        engine, settings.files_dir, settings.file_max_lines, settings.file_max_bytes
    )
    task_message = TaskMessages(make_celery(settings)).run_job
    submitter = LineSubmitter(
        settings.catalog,
        keys,
        Billing(engine, client, settings.timezone, settings.catalog.total_timeouts()),
        store,
        limiter,
        task_message,
    )
    return Dispatcher(
        client,
        Finisher(
            BatchStore(engine), files, progress, Results(progress, store, history)
        ),
        Collector(progress, store, history, limiter, task_message),
        submitter,
        settings.bulk_window,
        keys.identity,
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[batches] %(message)s")
    settings = load_settings()
    while True:  # the database may not be up yet
        try:
            migrate(make_engine(settings.database_url))
            break
        except (SQLAlchemyError, redis.RedisError) as exc:
            log.warning("batches: waiting for the database: %s", exc)
            time.sleep(1)
    build(settings).run_forever()


if __name__ == "__main__":
    main()
