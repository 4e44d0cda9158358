"""Celery tasks: thin wrappers that hand a job id to the JobRunner."""

from __future__ import annotations

import threading

from celery import shared_task

from common.cancel import CancelRegistry
from common.queues import TASK_RUN_JOB
from common.redis_client import connect
from common.runner import JobRunner
from common.storage import JobStore
from workers.celery_app import LlmqCelery

_runner: JobRunner | None = None
_runner_lock = threading.Lock()


def _runner_for(app: LlmqCelery) -> JobRunner:
    """This process's JobRunner, built on first use (after the pool forked)."""
    global _runner
    with _runner_lock:
        if _runner is None:
            settings = app.llmq_settings
            client = connect(settings.redis_url, settings.redis_timeout_seconds)
            _runner = JobRunner(
                JobStore(client, settings.job_ttl_seconds),
                settings.catalog,
                CancelRegistry(client),
            )
        return _runner


@shared_task(name=TASK_RUN_JOB, bind=True, ignore_result=True)
def run_job(self, job_id: str) -> None:  # type: ignore[no-untyped-def]
    """Run one job to a terminal state; safe to run again for the same id."""
    _runner_for(self.app).run(job_id)
