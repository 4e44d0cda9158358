"""Celery tasks and worker signals: thin wrappers around JobRunner and Supervisor."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import current_app, shared_task
from celery.signals import worker_ready, worker_shutting_down

from common.execution.cancel import CancelRegistry
from common.execution.runner import JobRunner
from common.execution.supervisor import Supervisor
from common.jobs.store import JobStore
from common.limits import Limiter
from common.queues import TASK_RUN_JOB
from common.redis.client import connect
from workers.broker.messages import TaskMessages
from workers.broker.transport import settled, unacked_entry
from workers.celery_app import LlmqCelery

log = logging.getLogger(__name__)

# Celery logs every task's receipt and success at INFO: two lines per job, 5 % of a
# worker's CPU at hundreds of jobs per second. Failures still log; Flower and the
# job records show every task.
for _name in ("celery.worker.strategy", "celery.app.trace"):
    logging.getLogger(_name).setLevel(logging.WARNING)

_supervisor: Supervisor | None = None
_lock = threading.Lock()


def _supervisor_for(app: LlmqCelery) -> Supervisor:
    """This process's runner and its supervisor, built on first use."""
    global _supervisor
    with _lock:
        if _supervisor is None:
            settings = app.llmq_settings
            client = connect(settings.redis_url, settings.redis_timeout_seconds)
            runner = JobRunner(
                JobStore(
                    client,
                    settings.job_ttl_seconds,
                    settings.catalog.total_timeouts(),
                ),
                settings.catalog,
                CancelRegistry(client),
                Limiter(client),
                TaskMessages(app).run_job,
                settings.lease_seconds,
                settings.delta_window_ms / 1000,
            )
            _supervisor = Supervisor(runner)
            _supervisor.start()
        return _supervisor


@worker_ready.connect
def _on_ready(**_: Any) -> None:
    # Start the reaper even if this worker never gets a task.
    _supervisor_for(current_app)


@worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    if _supervisor is not None:
        grace = current_app.llmq_settings.worker_grace_seconds
        log.info("worker stopping: running jobs get %.0f s to finish", grace)
        _supervisor.shutdown(grace)


@shared_task(name=TASK_RUN_JOB, bind=True, ignore_result=True)
def run_job(self, job_id: str) -> None:  # type: ignore[no-untyped-def]
    """Run one job to a terminal state; safe to run again for the same id.

    The job's start also acknowledges this task's message (see
    workers.broker.transport).
    """
    tag = (self.request.properties or {}).get("delivery_tag")
    unacked = unacked_entry(self.app.conf.broker_transport_options, tag)
    _supervisor_for(self.app).runner.run(job_id, unacked)
    settled(tag)
