"""Collecting the ends of a batch's running requests, and recovering the ones a
crash left without a job (common/batches/progress.py explains the steps)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from common.batches.progress import BatchProgress, Outcome, job_id_for
from common.jobs.history import JobHistory
from common.jobs.lifecycle import cancel_queued
from common.jobs.model import TERMINAL_STATUSES, JobStatus, TaskPush
from common.jobs.store import JobStore
from common.jsoncodec import loads
from common.limits import Limiter
from common.queues import Priority
from common.redis import keys

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from common.batches.dispatcher import Dispatcher
    from common.batches.plan import Plan

#: Fields of a job read to learn whether and how it ended.
_FIELDS = ("status", "provider", "usage", "created_at")
#: A batch request still queued this long after its job was created has lost its
#: task message (a worker killed between taking it and starting the job, which
#: the broker redelivers only after its visibility timeout, hours on): its task
#: is pushed again, once. A second task for a job is harmless: the first start
#: wins and the other finds the job taken.
REQUEUE_AFTER_SECONDS = 30.0


def _tokens(usage: Any) -> tuple[int, int]:
    usage = usage or {}
    return int(usage.get("prompt_tokens") or 0), int(
        usage.get("completion_tokens") or 0
    )


class Collector:
    """Checks each running request's job, as one pipeline per tick."""

    def __init__(
        self,
        progress: BatchProgress,
        store: JobStore,
        history: JobHistory,
        limiter: Limiter,
        task_message: Callable[[str, Priority], TaskPush],
    ) -> None:
        self.progress = progress
        self.store = store
        self.history = history
        self.limiter = limiter
        self.task_message = task_message

    def collect(self, plans: Sequence[Plan], dispatcher: Dispatcher) -> Counter[str]:
        """Record the ended requests of ``plans``; the requests still running,
        by provider."""
        in_flight: Counter[str] = Counter()
        for plan in plans:
            running = self.progress.running(plan.row.id)
            plan.running = set(running)
            if not running:
                continue
            ids = {index: job_id_for(plan.row.id, index) for index in running}
            pipe = self.store.redis.pipeline(transaction=False)
            for job_id in ids.values():
                pipe.hmget(keys.job_key(job_id), _FIELDS)
            missing: list[int] = []
            for index, raw in zip(ids, pipe.execute(), strict=True):
                status, provider, usage, created = (
                    v.decode() if v is not None else None for v in raw
                )
                job_id = ids[index]
                if status is None:
                    missing.append(index)
                    continue
                if status in TERMINAL_STATUSES:
                    self._finish(plan, index, status, loads(usage) if usage else None)
                    continue
                in_flight[provider or ""] += 1
                if plan.ending is not None and job_id not in plan.stopped:
                    plan.stopped.add(job_id)
                    self._stop(job_id, status)
                elif (
                    status == JobStatus.QUEUED
                    and time.time() - float(created or 0) > REQUEUE_AFTER_SECONDS
                    and job_id not in plan.requeued
                ):
                    plan.requeued.add(job_id)
                    self._requeue(job_id)
            self._recover(plan, missing, {i: running[i] for i in missing}, dispatcher)
        return in_flight

    def _recover(
        self,
        plan: Plan,
        missing: list[int],
        offsets: dict[int, int],
        dispatcher: Dispatcher,
    ) -> None:
        """Requests whose job is not in Redis: ended and moved to the database,
        or never created (the dispatcher died between taking and creating)."""
        if not missing:
            return
        stored = self.history.get_many([job_id_for(plan.row.id, i) for i in missing])
        for index in missing:
            job = stored.get(job_id_for(plan.row.id, index))
            if job is not None:
                self._finish(plan, index, job.status, job.usage)
            else:
                dispatcher.restart(plan, index, offsets[index])

    def _finish(self, plan: Plan, index: int, status: str, usage: Any) -> None:
        outcome = Outcome.COMPLETED if status == JobStatus.SUCCEEDED else Outcome.FAILED
        self.progress.finish(plan.row.id, index, outcome, _tokens(usage))
        plan.running.discard(index)

    def _requeue(self, job_id: str) -> None:
        """Push a queued job's task again (see ``REQUEUE_AFTER_SECONDS``)."""
        job = self.store.get(job_id)
        if job is None:
            return
        moved = self.store.transition(
            job, expected=(JobStatus.QUEUED,), task=self.task_message(job_id, "bulk")
        )
        if moved.applied:
            log.warning(
                "batch job %s was queued too long; its task is pushed again", job_id
            )

    def _stop(self, job_id: str, status: str) -> None:
        """Stop a job of a cancelled or expired batch: a queued one never starts,
        a running one is told to stop."""
        if status == JobStatus.QUEUED:
            job = self.store.get(job_id)
            if job is not None and cancel_queued(self.store, self.limiter, job):
                return
        self.store.request_cancel(job_id)
