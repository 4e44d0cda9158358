"""Running one job: retries and fallbacks around the provider stream, under the
provider's limits (common/execution/provider_limits.py).

A run owns the job through a lease (see storage); every write it makes checks
the lease, so a redelivered task never runs a job twice at once. A job found
``running`` with no live lease was orphaned by a dead worker and is started
over, announced by a ``status`` event with ``reset: true``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.catalog import Catalog, ModelConfig, RetryPolicy
from common.completions import CompletionAccumulator
from common.errors import (
    GatewayError,
    InvalidModelError,
    ProviderError,
    ProviderTimeoutError,
)
from common.execution.cancel import CancelRegistry, CancelToken, StopReason
from common.execution.deltas import DeltaBatcher
from common.execution.provider_limits import provider_rates, wait_for_limits
from common.jobs.lifecycle import finish_job
from common.jobs.model import (
    EventType,
    JobRecord,
    JobStatus,
    LeaseOp,
    TaskPush,
    Transition,
    Unacked,
    now,
)
from common.jobs.store import JobStore
from common.jsoncodec import dumps
from common.limits import Limiter
from common.providers import build_provider
from common.providers.base import Provider
from common.tokens import estimate_prompt_tokens, estimate_request_tokens

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One worker's hold on one job."""

    job_id: str
    token: str
    cancel: CancelToken
    deadline: float
    attempts: int
    provider: str
    slot_scopes: list[str] = field(default_factory=list)
    #: Record fields changed by this run and not yet written; they ride along
    #: with its next write (the run owns the job, so nobody else changes them).
    unsaved: dict[str, Any] = field(default_factory=dict)
    #: Deltas its stream left unwritten; they go first in its next own write.
    unsent: list[tuple[str, str]] = field(default_factory=list)

    def take_unsent(self, events: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """``events`` preceded by the unsent deltas, which are then forgotten."""
        unsent, self.unsent = self.unsent, []
        return [*unsent, *events]


@dataclass
class Outcome:
    """What the attempts produced: the last reply (maybe partial) and any error."""

    acc: CompletionAccumulator
    error: GatewayError | None = None


def backoff_seconds(
    policy: RetryPolicy, retry: int, retry_after: float | None
) -> float:
    """Exponential backoff with full jitter, never shorter than ``Retry-After``."""
    ceiling = min(policy.max_delay, policy.base_delay * 2**retry)
    return max(random.uniform(0, ceiling), retry_after or 0.0)


class JobRunner:
    """Executes jobs in a worker process; one instance per process."""

    def __init__(
        self,
        store: JobStore,
        catalog: Catalog,
        cancels: CancelRegistry,
        limiter: Limiter,
        task_for: Callable[[str, str], TaskPush],
        lease_seconds: float,
        delta_window_seconds: float = 0.0,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.cancels = cancels
        self.limiter = limiter
        #: The task message that runs a job again, pushed by the transition that
        #: hands it back to the queue (never a queued job without its task).
        self.task_for = task_for
        self.lease_seconds = lease_seconds
        self.active: dict[str, Run] = {}
        self._lock = threading.Lock()
        self.deltas = DeltaBatcher(store.append_many, delta_window_seconds)
        self.providers: dict[str, Provider] = {
            name: build_provider(config) for name, config in catalog.providers.items()
        }

    def run(self, job_id: str, unacked: Unacked | None = None) -> None:
        """Run a job to a terminal state, unless it ended or another run owns it.

        ``unacked``: the broker's entry for the task message, settled by the start.
        """
        started = self._start(job_id, uuid.uuid4().hex, unacked)
        if started is None:
            return
        job, run = started
        model = self.catalog.find_model(job.model, job.provider)
        try:
            if model is None:
                error: GatewayError = InvalidModelError(
                    f"model {job.model!r} left the catalog"
                )
                outcome = Outcome(
                    CompletionAccumulator(job.id, job.model, int(job.created_at)), error
                )
            else:
                outcome = self._execute(job, run, model)
        finally:
            self.cancels.unregister(job.id)
            with self._lock:
                self.active.pop(job.id, None)
        self._conclude(job, run, outcome)

    def _start(
        self, job_id: str, token: str, unacked: Unacked | None
    ) -> tuple[JobRecord, Run] | None:
        """Take the job's lease and mark it running; None if it is not ours to run."""
        job, moved = self.store.start(job_id, token, self.lease_seconds, unacked)
        if job is None:
            log.warning("job %s not found (expired?); dropping its task", job_id)
            return None
        if not moved.applied:
            log.info("job %s is %s or leased elsewhere; skipping", job_id, job.status)
            return None
        if job.attempts > 1:
            log.warning("job %s is being run again after a lost run", job_id)
        run = Run(
            job.id,
            token,
            self.cancels.register(job.id),
            job.deadline_at or now(),
            # The start counted this run's first attempt already (so a run killed
            # before its first write still counts); ``_attempt`` counts it again
            # in memory, to the same number.
            job.attempts - 1,
            job.provider,
        )
        with self._lock:
            self.active[job.id] = run
        if moved.cancel_requested:
            run.cancel.cancel(StopReason.CANCELLED)
        return job, run

    def _execute(self, job: JobRecord, run: Run, model: ModelConfig) -> Outcome:
        """Try the model, with retries, then its fallbacks, until one succeeds."""
        chain = [model, *self._fallbacks(model)]
        outcome = Outcome(CompletionAccumulator(job.id, model.id, int(job.created_at)))
        for position, candidate in enumerate(chain):
            if position:
                self._announce(
                    job,
                    run,
                    {
                        "status": JobStatus.RUNNING,
                        "reset": True,
                        "fallback": candidate.id,
                        "error": outcome.error.code if outcome.error else None,
                    },
                )
            outcome = self._with_retries(job, run, candidate)
            if outcome.error is None or run.cancel.is_set():
                return outcome
        return outcome

    def _with_retries(self, job: JobRecord, run: Run, model: ModelConfig) -> Outcome:
        policy = self.catalog.retry_for(model)
        for retry in range(policy.max_retries + 1):
            acc = CompletionAccumulator(job.id, model.id, int(job.created_at))
            try:
                self._attempt(job, run, model, acc)
                return Outcome(acc)
            except ProviderError as exc:
                outcome = Outcome(acc, exc)
                if run.cancel.is_set() or acc.chunks or not exc.retryable:
                    return outcome
                if retry == policy.max_retries:
                    return outcome
                delay = backoff_seconds(
                    policy, retry, getattr(exc, "retry_after", None)
                )
                if now() + delay > run.deadline:
                    return outcome
                self._announce(
                    job,
                    run,
                    {
                        "status": JobStatus.RUNNING,
                        "retry": retry + 1,
                        "error": exc.code,
                        "delay": round(delay, 3),
                    },
                )
                if run.cancel.wait(delay):
                    return outcome
        raise AssertionError("unreachable")  # the loop always returns

    def _attempt(
        self, job: JobRecord, run: Run, model: ModelConfig, acc: CompletionAccumulator
    ) -> None:
        """One upstream call under the model's limits, relaying each chunk."""
        run.attempts += 1
        run.provider = model.provider
        run.unsaved.update(attempts=run.attempts, provider=model.provider)
        prompt = estimate_prompt_tokens(job.request.get("messages", []))
        estimate = estimate_request_tokens(job.request)
        rates = provider_rates(self.catalog, model, estimate)
        scopes = wait_for_limits(
            self.limiter,
            self.catalog,
            model,
            rates,
            run.token,
            self.lease_seconds,
            run.cancel,
            lambda status: self._announce(job, run, status),
            reserved=job.paced and run.attempts == 1 and model.id == job.model,
        )
        if scopes is None:
            return
        run.slot_scopes = scopes
        deltas = self.deltas.open(
            job, run.token, run.unsaved, lambda result: self._note(run, result)
        )
        try:
            for chunk in self.providers[model.provider].stream(
                model, job.request, run.cancel
            ):
                relay = acc.add(chunk)
                if relay is not None:
                    deltas.add(relay)
                if run.cancel.is_set():
                    return
        finally:
            run.unsent += [(EventType.DELTA, dumps(chunk)) for chunk in deltas.detach()]
            self.limiter.release_slots(run.token, run.slot_scopes)
            run.slot_scopes = []
            used = acc.final_usage(prompt)["total_tokens"] if acc.chunks else 0
            for rate, _ in rates:
                if rate.unit == "tpm":
                    self.limiter.settle(rate, int(used) - estimate)

    def _fallbacks(self, model: ModelConfig) -> list[ModelConfig]:
        found = (self.catalog.find_model(name) for name in model.fallbacks)
        return [m for m in found if m is not None]

    def _announce(self, job: JobRecord, run: Run, status: dict[str, Any]) -> None:
        self._append(job, run, [(EventType.STATUS, dumps(status))])

    def _append(self, job: JobRecord, run: Run, events: list[tuple[str, str]]) -> None:
        fields = dict(run.unsaved)
        run.unsaved.clear()
        self._note(
            run,
            self.store.transition(
                job,
                fields=fields,
                events=run.take_unsent(events),
                lease=(LeaseOp.HOLD, run.token),
            ),
        )

    @staticmethod
    def _note(run: Run, written: Transition) -> None:
        """Stop the run if a write found its lease lost or a cancel requested."""
        if written.lease_lost:
            run.cancel.cancel(StopReason.LEASE_LOST)
        elif written.cancel_requested:
            run.cancel.cancel(StopReason.CANCELLED)

    def _conclude(self, job: JobRecord, run: Run, outcome: Outcome) -> None:
        reason = run.cancel.reason if run.cancel.is_set() else None
        if reason == StopReason.LEASE_LOST:
            log.warning("job %s: lease lost; leaving it to its new owner", job.id)
            return
        if reason == StopReason.SHUTDOWN:
            self._requeue(job, run)
            return
        job = dataclasses.replace(job, attempts=run.attempts, provider=run.provider)
        acc, error = outcome.acc, outcome.error
        status = JobStatus.SUCCEEDED
        if reason == StopReason.DEADLINE:
            status, error = (
                JobStatus.FAILED,
                ProviderTimeoutError(f"job {job.id} passed its deadline"),
            )
        elif reason == StopReason.CANCELLED:
            status, error = JobStatus.CANCELLED, None
        elif error is not None:
            status = JobStatus.FAILED
            log.info("job %s failed: %s", job.id, error.code)
        usage = acc.final_usage(estimate_prompt_tokens(job.request.get("messages", [])))
        fields: dict[str, Any] = {
            **run.unsaved,
            "usage": usage,
            "usage_estimated": None if acc.usage_reported else 1,
        }
        if status == JobStatus.SUCCEEDED or acc.chunks:
            fields["result"] = acc.completion(usage)
        events = run.take_unsent([])
        if error is not None:
            fields["error"] = error.to_dict()
            events.append((EventType.ERROR, dumps(error.to_dict())))
        elif status == JobStatus.CANCELLED:
            events.append((EventType.STATUS, dumps({"status": JobStatus.CANCELLED})))
        finish_job(
            self.store,
            self.limiter,
            job,
            status,
            expected=(JobStatus.RUNNING,),
            fields=fields,
            events=events,
            lease=(LeaseOp.DROP, run.token),
        )

    def _requeue(self, job: JobRecord, run: Run) -> None:
        """Hand an unfinished job back to the queue (its worker is stopping)."""
        moved = self.store.transition(
            job,
            expected=(JobStatus.RUNNING,),
            fields={**run.unsaved, "status": JobStatus.QUEUED},
            events=run.take_unsent(
                [
                    (
                        EventType.STATUS,
                        dumps(
                            {"status": JobStatus.QUEUED, "reason": "worker shutdown"}
                        ),
                    )
                ]
            ),
            lease=(LeaseOp.DROP, run.token),
            task=self.task_for(job.id, job.priority),
        )
        if moved.applied:
            log.info("job %s handed back to the queue at shutdown", job.id)
