"""Celery queue and task names shared by the producer (web) and the workers."""

from __future__ import annotations

from typing import Literal

QUEUE_INTERACTIVE = "interactive"
QUEUE_BULK = "bulk"
QUEUES = (QUEUE_INTERACTIVE, QUEUE_BULK)

Priority = Literal["interactive", "bulk"]

#: The task that runs one job; web enqueues it by name, never by import.
TASK_RUN_JOB = "workers.tasks.run_job"
