"""A batch request's line in the output or error file (API.md section 6).

``{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null,
"error": {"code", "message"} | null}``: a request that got an answer (a reply,
or a refusal by llmq or the provider) carries it as ``response``, with the same
body a direct call would have got; ``error`` is for requests that never got one
(``batch_cancelled``, ``batch_expired``).
"""

from __future__ import annotations

import enum
from typing import Any

import orjson

from common.errors import GatewayError
from common.jobs.model import JobRecord, JobStatus


class Unanswered(enum.StrEnum):
    """Why a request got no response."""

    BATCH_CANCELLED = "batch_cancelled"
    BATCH_EXPIRED = "batch_expired"


_MESSAGES = {
    Unanswered.BATCH_CANCELLED: "the batch was cancelled before this request ended",
    Unanswered.BATCH_EXPIRED: "the batch's 24h window ended before this request did",
}


def _line_id(custom_id_key: str) -> str:
    return f"batch_req_{custom_id_key.removeprefix('job_')}"


def answered(job_id: str, custom_id: str, status: int, body: Any) -> bytes:
    """The line of a request that got a response."""
    return _encode(
        {
            "id": _line_id(job_id),
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": job_id, "body": body},
            "error": None,
        }
    )


def refused(job_id: str, custom_id: str, error: GatewayError) -> bytes:
    """The line of a request llmq refused before it ran (no job exists)."""
    return _encode(
        {
            "id": _line_id(job_id),
            "custom_id": custom_id,
            "response": {
                "status_code": error.status,
                "request_id": None,
                "body": {"error": error.to_dict()},
            },
            "error": None,
        }
    )


def unanswered(job_id: str, custom_id: str, why: Unanswered) -> bytes:
    """The line of a request that never got a response."""
    return _encode(
        {
            "id": _line_id(job_id),
            "custom_id": custom_id,
            "response": None,
            "error": {"code": why, "message": _MESSAGES[why]},
        }
    )


def of_job(job: JobRecord, custom_id: str, ending: Unanswered | None) -> bytes:
    """The line of a request whose job ended (``ending``: why the batch stopped
    early, for a job it cancelled)."""
    if job.status == JobStatus.SUCCEEDED:
        return answered(job.id, custom_id, 200, job.result)
    if job.status == JobStatus.CANCELLED:
        return unanswered(job.id, custom_id, ending or Unanswered.BATCH_CANCELLED)
    error = GatewayError.from_dict(job.error or {})
    return answered(job.id, custom_id, error.status, {"error": job.error})


def _encode(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value) + b"\n"
