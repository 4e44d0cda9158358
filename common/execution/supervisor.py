"""A worker process's housekeeping thread: heartbeats, deadlines, the reaper, shutdown.

- Heartbeat: every third of the lease, renew the lease and concurrency slots of
  each run in this process; a run whose lease was taken over is stopped.
- Deadlines: a run past its deadline is stopped and ends ``failed``/``timeout``.
- Reaper: jobs whose lease lapsed (their worker died) are put back on their
  queue, or failed as ``timeout`` once past their deadline. Every worker runs
  one; the orphan lease op makes sure only one of them acts on a job.
- Shutdown: when the worker stops, running streams get ``grace`` seconds to
  finish; then they are handed back to the queue.
"""

from __future__ import annotations

import _thread
import logging
import threading
import time

import redis

from common.errors import ProviderTimeoutError, UnavailableError
from common.execution.cancel import StopReason
from common.execution.runner import JobRunner
from common.jobs.lifecycle import finish_job
from common.jobs.model import EventType, JobStatus, LeaseOp, now
from common.jsoncodec import dumps

log = logging.getLogger(__name__)


class Supervisor:
    """Runs the housekeeping loop for one JobRunner."""

    def __init__(self, runner: JobRunner) -> None:
        self.runner = runner
        self.interval = runner.lease_seconds / 3
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the loop once per process."""
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._loop, name="llmq-supervisor", daemon=True).start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.beat()
                self.reap()
            except (redis.RedisError, UnavailableError):
                log.warning("supervisor cannot reach Redis; will retry")

    def beat(self) -> None:
        """Renew this process's leases and slots; stop runs that lost or overran."""
        runner = self.runner
        for run in list(runner.active.values()):
            if not runner.store.renew(run.job_id, run.token, runner.lease_seconds):
                run.cancel.cancel(StopReason.LEASE_LOST)
                continue
            runner.limiter.renew_slots(run.token, run.slot_scopes, runner.lease_seconds)
            if now() > run.deadline:
                run.cancel.cancel(StopReason.DEADLINE)

    def reap(self) -> None:
        """Requeue (or time out) running jobs whose worker stopped renewing them."""
        store = self.runner.store
        for job_id in store.expired_leases():
            job = store.get(job_id)
            if job is None or job.status != JobStatus.RUNNING:
                store.forget_running(job_id)
                continue
            if job.deadline_at and now() > job.deadline_at:
                error = ProviderTimeoutError(f"job {job.id} passed its deadline")
                finish_job(
                    store,
                    self.runner.limiter,
                    job,
                    JobStatus.FAILED,
                    expected=(JobStatus.RUNNING,),
                    fields={"error": error.to_dict()},
                    events=[(EventType.ERROR, dumps(error.to_dict()))],
                    lease=(LeaseOp.ORPHAN, ""),
                )
                continue
            moved = store.transition(
                job,
                expected=(JobStatus.RUNNING,),
                fields={"status": JobStatus.QUEUED},
                events=[
                    (
                        EventType.STATUS,
                        dumps({"status": JobStatus.QUEUED, "reason": "worker lost"}),
                    )
                ],
                lease=(LeaseOp.ORPHAN, ""),
                task=self.runner.task_for(job.id, job.priority),
            )
            if moved.applied:
                log.warning("job %s lost its worker; queued again", job.id)

    def shutdown(self, grace_seconds: float) -> None:
        """Give running streams ``grace_seconds``, then hand the rest back."""

        def expire() -> None:
            deadline = time.monotonic() + grace_seconds
            while self.runner.active and time.monotonic() < deadline:
                time.sleep(0.1)
            for run in list(self.runner.active.values()):
                run.cancel.cancel(StopReason.SHUTDOWN)

        # Celery calls this from its signal handler, which under gevent can run on
        # the event loop itself, where nothing may wait: ``Thread.start`` waits
        # for the thread to start, ``start_new_thread`` does not.
        _thread.start_new_thread(expire, ())
