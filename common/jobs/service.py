"""Submitting, reading, waiting on and cancelling jobs: what every web route calls."""

from __future__ import annotations

import dataclasses
import hashlib
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from common.accounts.billing import Billing
from common.accounts.models import KeyIdentity
from common.accounts.store import KeyStore
from common.catalog import Catalog, ModelConfig, ModelType
from common.errors import (
    ConflictError,
    ForbiddenError,
    InvalidModelError,
    NotFoundError,
    RateLimitedError,
    UnauthorizedError,
)
from common.jobs.events import Event, EventLog
from common.jobs.history import JobHistory, created_ms
from common.jobs.lifecycle import (
    cancel_queued,
    create_while_live,
    job_object,
    key_slot,
    queued_fields,
)
from common.jobs.listing import merged_page
from common.jobs.model import (
    EventType,
    JobRecord,
    JobStatus,
    TaskPush,
    record_from,
)
from common.jobs.store import JobStore
from common.jsoncodec import dumps
from common.limits import Admission, Limiter, Rate
from common.queues import Priority
from common.redis.keys import idempotency_key
from common.schemas import ChatRequest
from common.tokens import estimate_request_tokens

#: Longest a key's concurrency slot is held without its job ending (a backstop).
KEY_SLOT_HOLD_SECONDS = 24 * 3600


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def resolve_model(
    catalog: Catalog, caller: KeyIdentity, model_id: str, provider: str | None
) -> ModelConfig:
    """The catalog model a request names, checked against the caller's allow-list.

    Raises:
        InvalidModelError: unknown or disabled model or provider, or not a chat model.
        ForbiddenError: the key may not use this model.
    """
    if provider is not None:
        config = catalog.providers.get(provider)
        if config is None or not config.enabled:
            raise InvalidModelError(f"unknown provider {provider!r}", param="provider")
    model = catalog.find_model(model_id, provider)
    if model is None or model.type != ModelType.LANGUAGE:
        raise InvalidModelError(f"unknown model {model_id!r}", param="model")
    if caller.models is not None and model.id not in caller.models:
        raise ForbiddenError(f"this key may not use model {model_id!r}", param="model")
    return model


def key_rates(caller: KeyIdentity, tokens: int) -> list[tuple[Rate, int]]:
    """The per-key rate limits a request of ``tokens`` tokens counts against."""
    rates = []
    if caller.rpm:
        rates.append((Rate(key_slot(caller.id), "rpm", caller.rpm), 1))
    if caller.tpm:
        rates.append((Rate(key_slot(caller.id), "tpm", caller.tpm), tokens))
    return rates


@dataclass(frozen=True)
class Submission:
    """A submitted (or idempotently replayed) job and the key's rate-limit state."""

    job: JobRecord
    admission: Admission
    #: The job's events from its creation on, when the submitter asked to follow.
    inbox: queue.SimpleQueue[Event] | None = None
    #: A metered key's balance after the job's hold (``X-Account-Balance``).
    balance_micro: int | None = None


class JobService:
    """The job machinery as the web front end sees it."""

    def __init__(
        self,
        store: JobStore,
        events: EventLog,
        catalog: Catalog,
        limiter: Limiter,
        task_message: Callable[[str, Priority], TaskPush],
        keys: KeyStore,
        history: JobHistory,
        billing: Billing,
    ) -> None:
        self.store = store
        self.history = history
        self.billing = billing
        self.events = events
        self.catalog = catalog
        self.limiter = limiter
        self.keys = keys
        #: The task message (and its unacked entry) that runs a job.
        self.task_message = task_message

    def submit(
        self,
        caller: KeyIdentity,
        request: ChatRequest,
        *,
        provider: str | None = None,
        priority: Priority = "interactive",
        metadata: dict[str, Any] | None = None,
        idempotency: str | None = None,
        follow: bool = False,
    ) -> Submission:
        """Validate, admit under the key's limits, store the job with its task.

        With ``follow`` the job is created to publish its events on this
        process's channel too, which is listened to before the job exists, so
        following it (``Submission.inbox``) needs no subscription and no first
        read of its log.

        Raises:
            RateLimitedError: the key's rpm, tpm or concurrency is used up.
            ConflictError: ``idempotency`` was used with a different body.
        """
        model = resolve_model(self.catalog, caller, request.model, provider)
        body = request.upstream_body()
        asked = dict(body)  # what idempotency compares: before any cap
        job_id = new_job_id()
        hold = (
            self.billing.hold_for(caller.id, job_id, model, body)
            if caller.metered
            else None
        )
        try:
            submission = self._submit(
                caller,
                model,
                (body, asked),
                job_id,
                priority,
                metadata,
                idempotency,
                follow,
            )
        except BaseException:
            if hold is not None:
                self.billing.release(job_id)
            raise
        if hold is not None:
            if submission.job.id != job_id:  # an idempotent replay: nothing stored
                self.billing.release(job_id)
            return dataclasses.replace(
                submission, balance_micro=hold.balance_after_micro
            )
        return submission

    def _submit(
        self,
        caller: KeyIdentity,
        model: ModelConfig,
        bodies: tuple[dict[str, Any], dict[str, Any]],
        job_id: str,
        priority: Priority,
        metadata: dict[str, Any] | None,
        idempotency: str | None,
        follow: bool,
    ) -> Submission:
        """``submit`` once the hold is taken; ``bodies``: what goes upstream, and
        what the client asked (for the Idempotency-Key's comparison)."""
        body, asked = bodies
        metered = caller.metered and not model.price.free
        tokens = estimate_request_tokens(body)
        admission = self._admit(caller, tokens)
        slot = [(key_slot(caller.id), caller.concurrency)] if caller.concurrency else []
        if not self.limiter.acquire_slots(job_id, slot, KEY_SLOT_HOLD_SECONDS):
            raise RateLimitedError(
                f"this key already has {caller.concurrency} unfinished jobs",
                retry_after=1,
                admission=admission,
            )
        fields = {
            **queued_fields(job_id, caller.id, model, body, priority, metadata),
            "key_tpm": caller.tpm,
            "key_slot": 1 if caller.concurrency else None,
            "tpm_estimate": tokens if caller.tpm else None,
            "price": model.price.shown() if metered else None,
        }
        claim = None
        if idempotency:
            digest = hashlib.sha256(
                dumps([model.id, model.provider, priority, metadata, asked]).encode()
            ).hexdigest()
            claim = (idempotency_key(caller.id, idempotency), f"{digest} {job_id}")
        inbox = None
        if follow:
            inbox = self.events.hub.expect(job_id)
            fields["notify"] = self.events.hub.channel
        created = False
        try:
            prior = self._create(caller, fields, claim)
            created = prior is None
        finally:
            if inbox is not None and not created:
                self.unfollow(job_id, inbox)
        if prior is not None:
            self.limiter.release_slots(job_id, [key_slot(caller.id)])
            return Submission(self._replay(caller, prior, claim), admission)
        return Submission(record_from(fields), admission, inbox)

    def _create(
        self,
        caller: KeyIdentity,
        fields: dict[str, Any],
        claim: tuple[str, str] | None,
    ) -> str | None:
        """Store the job if ``caller``'s key is still live (checked in the same script).

        Raises:
            UnauthorizedError: the key was revoked since it was checked.
        """
        task = self.task_message(fields["id"], fields["priority"])
        try:
            return create_while_live(self.store, self.keys, caller, fields, claim, task)
        except UnauthorizedError:
            self.limiter.release_slots(fields["id"], [key_slot(caller.id)])
            raise

    def _admit(self, caller: KeyIdentity, tokens: int) -> Admission:
        admission = self.limiter.admit(key_rates(caller, tokens))
        if not admission.admitted:
            raise RateLimitedError(
                "rate limit reached for this key; retry after "
                f"{admission.retry_after_seconds:.1f} s",
                retry_after=admission.retry_after_seconds,
                admission=admission,
            )
        return admission

    def _replay(
        self, caller: KeyIdentity, prior: str, claim: tuple[str, str] | None
    ) -> JobRecord:
        digest, _, job_id = prior.partition(" ")
        assert claim is not None
        if claim[1].partition(" ")[0] != digest:
            raise ConflictError(
                "this Idempotency-Key was used with a different request body",
                param="Idempotency-Key",
            )
        return self.get(caller, job_id)

    def get(self, caller: KeyIdentity, job_id: str) -> JobRecord:
        """The caller's job. Raises NotFoundError for others' jobs as for none."""
        job = self.find(job_id)
        if job is None or job.owner != caller.id:
            raise NotFoundError(f"no job {job_id!r}", param="job_id")
        return job

    def find(self, job_id: str) -> JobRecord | None:
        """The job as Redis holds it while live or in its window, else as the
        database holds it (it is written there before Redis lets it go)."""
        return self.store.get(job_id) or self.history.get(job_id)

    def view(self, job: JobRecord) -> dict[str, Any]:
        """The job object, with its queue position while queued."""
        position = (
            self.store.queue_position(job) if job.status == JobStatus.QUEUED else None
        )
        return job_object(job, position)

    def wait(self, job: JobRecord, seconds: float) -> JobRecord:
        """Hold until the job ends or ``seconds`` pass; return its latest record."""
        deadline = time.monotonic() + seconds
        after = self.events.last_id(job.id)
        latest = self.store.get(job.id) or job
        if latest.terminal:
            return latest
        for event in self.events.follow(job.id, after, idle_seconds=max(0.05, seconds)):
            if (
                event is None
                or event.type == EventType.DONE
                or time.monotonic() >= deadline
            ):
                break
        return self.find(job.id) or latest

    def follow(
        self,
        job: JobRecord,
        after: int,
        idle_seconds: float,
        inbox: queue.SimpleQueue[Event] | None = None,
    ) -> Iterator[Event | None]:
        """The job's events after ``after``, live, ending with ``done``.

        ``inbox``: the inbox ``submit`` opened for a new job (see there). A job
        past its replay window replays from the database, compacted; one that
        leaves Redis while followed goes on from there.
        """
        if inbox is not None:
            # A job just submitted: its log outlives this follower by the window.
            return self.events.follow(job.id, after, idle_seconds, inbox)
        if job.terminal and not self.events.exists(job.id):
            return iter(self.history.events(job.id, after))
        return self._follow(job, after, idle_seconds)

    def _follow(
        self, job: JobRecord, after: int, idle_seconds: float
    ) -> Iterator[Event | None]:
        """Follow the log, and go on from the database if it leaves Redis first."""
        last = after
        for event in self.events.follow(job.id, after, idle_seconds):
            yield event
            if event is not None:
                last = event.id
                if event.type == EventType.DONE:
                    return
        yield from self.history.events(job.id, last)

    def unfollow(self, job_id: str, inbox: queue.SimpleQueue[Event]) -> None:
        """Close an inbox ``submit`` opened that nobody will follow."""
        self.events.hub.unsubscribe(job_id, inbox)

    def cancel(self, caller: KeyIdentity, job_id: str) -> JobRecord:
        """Cancel a job: a queued one ends at once, a running one is signalled."""
        job = self.get(caller, job_id)
        if job.status == JobStatus.QUEUED:
            cancelled = cancel_queued(self.store, self.limiter, job)
            if cancelled is not None:
                return cancelled
        if not job.terminal:
            self.store.request_cancel(job.id)
        return self.store.get(job.id) or job

    def list(
        self, caller: KeyIdentity, status: str | None, limit: int, after: str | None
    ) -> tuple[list[JobRecord], bool]:
        """The caller's jobs, newest first, and whether more follow: those Redis
        holds merged with the database's, each once (common/jobs/listing.py)."""
        before = None
        if after:
            last = self.find(after)
            if last is None or last.owner != caller.id:
                return [], False
            before = (created_ms(last), last.id)
        found = merged_page(
            self.store, self.history, caller.id, status, before, limit + 1
        )
        return found[:limit], len(found) > limit
