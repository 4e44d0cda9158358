"""Turning a job into an HTTP answer: wait for its result, or follow its events."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flask import g, request

from common.errors import GatewayError, JobCancelledError, ProviderTimeoutError
from common.jobs.events import Event
from common.jobs.model import EventType, JobRecord, JobStatus
from common.jobs.service import Submission
from common.jobs.store import CREATED_EVENT_ID
from common.jsoncodec import loads
from web import auth
from web.context import services
from web.ratelimit import rate_limit_headers

#: Longest a non-streaming request holds for its job before answering 504.
RESULT_WAIT_SECONDS = 900.0
#: Events that end the wait for a stream's first output.
_FIRST_OUTPUT = frozenset({EventType.DELTA, EventType.ERROR, EventType.DONE})
#: Longest a stream's response is held back waiting for its first output, so a
#: job that fails during its retries still gets a proper HTTP error status.
FIRST_OUTPUT_WAIT_SECONDS = 30.0


def submitted(submission: Submission) -> JobRecord:
    """Note the job id and the key's rate-limit state for the answer's headers,
    and the inbox a following submit opened (see ``_follow``).
    """
    g.job_id = submission.job.id
    g.rate_headers = rate_limit_headers(auth.caller(), submission.admission)
    if submission.balance_micro is not None:
        g.balance_micro = submission.balance_micro
    if submission.inbox is not None:
        g.inbox = submission.inbox
    return submission.job


def _follow(job: JobRecord) -> Iterator[Event | None]:
    """The job's events, through the inbox its submit opened if there is one
    (then after the ``queued`` event it was created with, without reading the log).
    """
    svc = services()
    inbox = g.pop("inbox", None)
    after = CREATED_EVENT_ID if inbox is not None else 0
    return svc.jobs.follow(job, after, svc.settings.sse_keepalive_seconds, inbox)


def drop_unfollowed(_: BaseException | None = None) -> None:
    """Teardown: close an inbox a submit opened for a job nobody followed."""
    inbox = g.pop("inbox", None)
    if inbox is not None:
        services().jobs.unfollow(g.job_id, inbox)


def await_result(job: JobRecord) -> dict[str, Any]:
    """Follow the job to its ``done`` event; return the final job object it carries.

    Raises the job's error unless it succeeded.
    """
    give_up = time.monotonic() + RESULT_WAIT_SECONDS
    for event in _follow(job):
        if event is not None and event.type == EventType.DONE:
            final: dict[str, Any] = loads(event.data)
            if final["status"] == JobStatus.FAILED:
                raise GatewayError.from_dict(final.get("error") or {})
            if final["status"] == JobStatus.CANCELLED:
                raise JobCancelledError(f"job {job.id} was cancelled")
            return final
        if time.monotonic() > give_up:
            break
    raise ProviderTimeoutError(f"job {job.id} is still running; follow its events")


def follow_from_first_output(job: JobRecord) -> Iterator[Event | None]:
    """The job's events, read up to its first output before returning.

    Reading ahead lets a job that fails before producing anything be answered
    with its proper HTTP status instead of a 200 stream that carries an error.
    """
    events = _follow(job)
    head: list[Event | None] = []
    give_up = time.monotonic() + FIRST_OUTPUT_WAIT_SECONDS
    for event in events:
        if event is not None:
            head.append(event)
        if event is not None and event.type in _FIRST_OUTPUT:
            break
        if time.monotonic() > give_up:
            head.append(None)
            break
    last = head[-1] if head else None
    if last is not None and last.type == EventType.ERROR:
        raise GatewayError.from_dict(loads(last.data))

    def chained() -> Iterator[Event | None]:
        yield from head
        yield from events

    return chained()


def cancel_on_disconnect(
    stream: Iterator[bytes], job: JobRecord, detach: bool
) -> Iterator[bytes]:
    """Relay ``stream``; if the client leaves before it ends, cancel the job.

    The WSGI server closes the generator when a write to a gone client fails,
    which raises GeneratorExit at the pending ``yield``. ``X-LLMQ-Detach: 1``
    keeps the job running so it can be followed at ``/v1/jobs/{id}/events``.
    """
    # Captured now: the generator body runs after the request context is gone.
    jobs, owner = services().jobs, auth.caller()

    def relay() -> Iterator[bytes]:
        finished = False
        try:
            yield from stream
            finished = True
        finally:
            if not finished and not detach:
                jobs.cancel(owner, job.id)

    return relay()


def wants_detach() -> bool:
    return bool(request.headers.get("X-LLMQ-Detach") == "1")
