"""A job's end, as web and worker both reach it: the public job object, the
key's limit scope, and finishing a job (its ``done`` event, its key's
slot and tokens settled)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from common.accounts.models import KeyIdentity
from common.accounts.store import KeyStore
from common.catalog import ModelConfig
from common.errors import UnauthorizedError
from common.jobs.model import (
    EventType,
    JobRecord,
    JobStatus,
    TaskPush,
    Transition,
    now,
)
from common.jobs.store import JobStore, KeysChanged
from common.jsoncodec import dumps
from common.limits import Limiter, Rate


def job_object(job: JobRecord, queue_position: int | None = None) -> dict[str, Any]:
    """The public job object of API.md section 5."""
    obj: dict[str, Any] = {
        "id": job.id,
        "object": "job",
        "status": job.status,
        "model": job.model,
        "provider": job.provider,
        "priority": job.priority,
        "created_at": int(job.created_at),
        "started_at": int(job.started_at) if job.started_at else None,
        "finished_at": int(job.finished_at) if job.finished_at else None,
        "attempts": job.attempts,
        "result": job.result,
        "error": job.error,
        "usage": job.usage,
        "metadata": job.metadata,
    }
    if job.status == JobStatus.QUEUED:
        obj["queue_position"] = queue_position
    return obj


def queued_fields(
    job_id: str,
    owner: str,
    model: ModelConfig,
    body: dict[str, Any],
    priority: str,
    metadata: dict[str, Any] | None,
) -> dict[str, Any]:
    """The record of a new queued job, before what its key's limits add."""
    return {
        "id": job_id,
        "owner": owner,
        "status": JobStatus.QUEUED,
        "model": model.id,
        "provider": model.provider,
        "priority": priority,
        "created_at": now(),
        "attempts": 0,
        "request": body,
        "metadata": metadata,
    }


def create_while_live(
    store: JobStore,
    keys: KeyStore,
    caller: KeyIdentity,
    fields: dict[str, Any],
    claim: tuple[str, str] | None,
    task: TaskPush,
) -> str | None:
    """``JobStore.create`` while ``caller``'s key is live: a key changed since it
    was checked is checked again, and the create tried again.

    Raises:
        UnauthorizedError: the key was revoked since it was checked.
    """
    while True:
        try:
            return store.create(fields, claim, task, caller.generation)
        except KeysChanged:
            rechecked = keys.recheck(caller)
            if rechecked is None:
                raise UnauthorizedError("invalid API key") from None
            caller = rechecked


def key_slot(owner: str) -> str:
    """The limit scope of one API key (its rates, and a slot per unfinished job)."""
    return f"key:{owner}"


def finish_job(
    store: JobStore,
    limiter: Limiter,
    job: JobRecord,
    status: str,
    *,
    expected: tuple[str, ...],
    fields: dict[str, Any] | None = None,
    events: Sequence[tuple[str, str]] = (),
    lease: tuple[str, str] | None = None,
) -> tuple[JobRecord, Transition]:
    """Move ``job`` to a terminal ``status``, appending ``events`` then ``done``.

    The ``done`` event carries the final job object, so a follower needs no
    second read. Applied only if the job is still in one of ``expected`` (and,
    with ``lease``, only under that lease op).
    """
    final = dataclasses.replace(job, status=status, finished_at=now(), **(fields or {}))
    changes = {"status": status, "finished_at": final.finished_at, **(fields or {})}
    done = store.transition(
        job,
        expected=expected,
        fields=changes,
        events=[*events, (EventType.DONE, dumps(job_object(final)))],
        lease=lease,
        refresh_ttl=True,
    )
    if done.applied:
        if job.key_slot:
            limiter.release_slots(job.id, [key_slot(job.owner)])
        if job.key_tpm and job.tpm_estimate:
            used = int((final.usage or {}).get("total_tokens", 0))
            rate = Rate(key_slot(job.owner), "tpm", job.key_tpm)
            limiter.settle(rate, used - job.tpm_estimate)
    return final, done


def cancel_queued(
    store: JobStore, limiter: Limiter, job: JobRecord
) -> JobRecord | None:
    """End a queued job ``cancelled`` before it starts; None if it had started."""
    final, done = finish_job(
        store,
        limiter,
        job,
        JobStatus.CANCELLED,
        expected=(JobStatus.QUEUED,),
        events=[(EventType.STATUS, dumps({"status": JobStatus.CANCELLED}))],
    )
    return final if done.applied else None
