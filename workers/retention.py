"""``python -m workers.retention``: moves finished jobs from Redis to the database.

Run by the worker's launcher beside its Celery workers (workers/launcher.py), in
a process of its own with no gevent: writing to the database and compacting
event logs take I/O waits and CPU that would otherwise stall a worker's streams
(a fresh worker's first history write alone held one for about 100 ms,
bench/RESULTS.md). Any number may run, on any machines: they share the work
through claims (common/jobs/retention.py).
"""

from __future__ import annotations

import logging
from functools import partial

from common.accounts.billing import Billing
from common.config import load_settings
from common.db.engine import make_engine
from common.db.migrate import migrate
from common.jobs.history import JobHistory
from common.jobs.retention import Retention
from common.redis.client import connect


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[retention] %(message)s")
    settings = load_settings()
    engine = make_engine(settings.database_url)
    client = connect(settings.redis_url, settings.redis_timeout_seconds)
    Retention(
        client,
        JobHistory(engine),
        settings.events_ttl_seconds,
        settings.job_ttl_seconds,
        Billing(engine, client, settings.timezone),
    ).run_forever(prepare=partial(migrate, engine))


if __name__ == "__main__":
    main()
