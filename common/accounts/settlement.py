"""Settling a finished job's hold: exactly once, from the job's own usage.

Run by the retention process in the transaction that writes the job's history
(common/jobs/retention.py), so a job is settled when, and only when, its
history is committed. Each hold row is released whole (``release``) and the
real cost charged (``settle``), the allowance's part first; the rows are unique
per (job, kind, source), so a second writer of the same job changes nothing.

The cost is the model's price of what the job used: its usage (the provider's,
or llmq's count when the provider sent none: ``estimated``), or for a model
priced by the character, the characters of its prompt and of what it
generated; the seconds from its start to its end. A job that never reached the
provider (cancelled while queued, failed before any output) costs nothing; a
cancelled or cut one costs what it generated. Never more than its hold.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, insert, select, update

from common.accounts.billing import insert_ignoring_duplicates, lock_key
from common.accounts.ledger import JobUsage, LedgerKind, LedgerRow, Source
from common.accounts.models import ApiKey, utcnow
from common.accounts.pricing import Price, PriceUnit, Usage
from common.jobs.model import JobRecord, JobStatus
from common.tokens import content_text


def _units(job: JobRecord, price: Price, output_text: str) -> Usage:
    seconds = Decimal(0)
    if job.started_at and job.finished_at:
        seconds = Decimal(str(round(job.finished_at - job.started_at, 6)))
    if price.unit == PriceUnit.CHARS:
        prompt = "".join(
            content_text(m.get("content")) for m in job.request.get("messages", [])
        )
        return Usage(len(prompt), len(output_text), seconds)
    usage = job.usage or {}
    return Usage(
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        seconds,
    )


def settle(conn: Connection, job: JobRecord, output_text: str) -> None:
    """Release ``job``'s holds and charge its cost at the price they were taken
    at (the record's ``price``), unless already settled."""
    holds = {
        row.source: row
        for row in conn.execute(
            select(LedgerRow.source, LedgerRow.amount_micro, LedgerRow.key_id).where(
                LedgerRow.job_id == job.id, LedgerRow.kind == LedgerKind.HOLD
            )
        )
    }
    if not holds:
        return
    key_id = next(iter(holds.values())).key_id
    held = {source: -int(row.amount_micro) for source, row in holds.items()}
    price = Price.model_validate(job.price or {})
    usage = _units(job, price, output_text)
    ran = job.started_at is not None and (
        job.status == JobStatus.SUCCEEDED or bool(output_text)
    )
    cost = min(price.cost(usage), sum(held.values())) if ran else 0
    charged = {Source.FREE: min(cost, held.get(Source.FREE, 0))}
    charged[Source.BALANCE] = cost - charged[Source.FREE]
    key = lock_key(conn, key_id)
    if key is None:
        return
    left = {Source.BALANCE: int(key.balance_micro or 0)}
    left[Source.FREE] = int(key.free_left_micro or 0)
    now = utcnow()
    for source, back in held.items():
        released = left[source] + back
        rows = (
            (LedgerKind.RELEASE, back, released),
            (LedgerKind.SETTLE, -charged[source], released - charged[source]),
        )
        for kind, amount, after in rows:
            if not insert_ignoring_duplicates(
                conn, _row(key_id, job, kind, source, amount, after, now)
            ):
                return  # settled before: a replayed write changes nothing
        left[source] = released - charged[source]
    conn.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .values(balance_micro=left[Source.BALANCE], free_left_micro=left[Source.FREE])
    )
    _record_usage(conn, job, key_id, usage, cost, now)


def _row(
    key_id: str,
    job: JobRecord,
    kind: LedgerKind,
    source: Source,
    amount: int,
    after: int,
    now: dt.datetime,
) -> dict[str, Any]:
    return {
        "key_id": key_id,
        "job_id": job.id,
        "kind": kind,
        "source": source,
        "amount_micro": amount,
        "balance_after_micro": after,
        "created_at": now,
    }


def _record_usage(
    conn: Connection,
    job: JobRecord,
    key_id: str,
    usage: Usage,
    cost: int,
    now: dt.datetime,
) -> None:
    conn.execute(
        insert(JobUsage).values(
            job_id=job.id,
            key_id=key_id,
            model=job.model,
            provider=job.provider,
            input_units=usage.input_units,
            output_units=usage.output_units,
            seconds=usage.seconds,
            cost_micro=cost,
            estimated=job.usage_estimated or job.usage is None,
            settled_at=now,
        )
    )
