"""The jobs API: submit, read, wait on, follow, cancel and list jobs."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Response, jsonify, request
from flask_openapi3 import APIBlueprint, Tag

from common.errors import InvalidRequestError
from common.jobs.events import Event
from common.schemas import (
    EventsQuery,
    JobCreateRequest,
    JobListQuery,
    JobPath,
    JobQuery,
)
from web import auth
from web.context import openai_list, services
from web.relay import submitted
from web.sse import KEEPALIVE, job_event, sse_response

bp = APIBlueprint("jobs", __name__, url_prefix="/v1/jobs", abp_tags=[Tag(name="jobs")])
bp.before_request(auth.require_key)

#: Longest an ``Idempotency-Key`` may be.
IDEMPOTENCY_KEY_MAX_CHARS = 255


@bp.post("")
@auth.checked_by_submit
def create_job(body: JobCreateRequest) -> tuple[Response, int]:
    """Submit a chat request as a job; answers 202 with the job object."""
    idem = request.headers.get("Idempotency-Key") or None
    if idem and len(idem) > IDEMPOTENCY_KEY_MAX_CHARS:
        raise InvalidRequestError(
            "Idempotency-Key is too long", param="Idempotency-Key"
        )
    svc = services()
    job = submitted(
        svc.jobs.submit(
            auth.caller(),
            body,
            provider=request.headers.get("X-AI-Provider") or None,
            priority=body.priority,
            metadata=body.metadata,
            idempotency=idem,
        )
    )
    return jsonify(svc.jobs.view(job)), 202


@bp.get("")
def list_jobs(query: JobListQuery) -> Response:
    """This key's jobs, newest first, as an OpenAI list."""
    svc = services()
    jobs, has_more = svc.jobs.list(
        auth.caller(), query.status, query.limit, query.after
    )
    data = [svc.jobs.view(job) for job in jobs]
    return openai_list(data, has_more)


@bp.get("/<job_id>")
def get_job(path: JobPath, query: JobQuery) -> Response:
    """The job object; ``?wait=N`` holds until it ends or N seconds pass."""
    svc = services()
    job = svc.jobs.get(auth.caller(), path.job_id)
    if query.wait and not job.terminal:
        job = svc.jobs.wait(job, query.wait)
    return jsonify(svc.jobs.view(job))


@bp.post("/<job_id>/cancel")
def cancel_job(path: JobPath) -> Response:
    """Cancel a job: a queued one never starts, a running one stops within 1 s."""
    svc = services()
    return jsonify(svc.jobs.view(svc.jobs.cancel(auth.caller(), path.job_id)))


@bp.get("/<job_id>/events")
def stream_job_events(path: JobPath, query: EventsQuery) -> Response:
    """The job's event log as SSE, from the first event or after Last-Event-ID."""
    svc = services()
    job = svc.jobs.get(auth.caller(), path.job_id)
    after = query.starting_after
    if after is None:
        header = request.headers.get("Last-Event-ID", "").strip()
        if header and not header.isdigit():
            raise InvalidRequestError(
                "Last-Event-ID must be an integer", param="Last-Event-ID"
            )
        after = int(header) if header else 0
    events = svc.jobs.follow(job, after, svc.settings.sse_keepalive_seconds)
    return sse_response(_relay(events), {"X-Job-Id": job.id})


def _relay(events: Iterator[Event | None]) -> Iterator[bytes]:
    for event in events:
        yield KEEPALIVE if event is None else job_event(event)
