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

from sqlalchemy import Connection, insert, update
from sqlalchemy.dialects import postgresql, sqlite

from common.accounts.billing import OpenHold, money_row
from common.accounts.ledger import JobUsage, LedgerKind, LedgerRow, Source
from common.accounts.models import ApiKey, utcnow
from common.accounts.pricing import Price, PriceUnit, Usage
from common.jobs.model import JobRecord, JobStatus
from common.tokens import content_text


def insert_ignoring_duplicates(conn: Connection, row: dict[str, Any]) -> bool:
    """Insert a ledger row unless its (job, kind, source) is there; whether it was."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(LedgerRow.__table__)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["job_id", "kind", "source"])
        .returning(LedgerRow.__table__.c.id)
    )
    return conn.execute(statement).first() is not None


def lock_key(conn: Connection, key_id: str) -> Any:
    """The key's money columns, its row locked until the transaction ends.

    A no-op ``UPDATE`` locks the row on PostgreSQL and takes SQLite's write lock,
    so one statement serialises the key's settlements on either.
    """
    conn.execute(
        update(ApiKey).where(ApiKey.id == key_id).values(free_day=ApiKey.free_day)
    )
    return money_row(conn, key_id)


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


def settle(
    conn: Connection, job: JobRecord, output_text: str, hold: OpenHold
) -> tuple[int, int]:
    """Write ``job``'s hold, its release and its cost to the ledger (unless a
    replay finds them there) and take the cost off the key's row; return what
    Redis's ``end_hold`` takes: the cost to the balance, the allowance given back.
    """
    price = Price.model_validate(job.price or {})
    usage = _units(job, price, output_text)
    ran = job.started_at is not None and (
        job.status == JobStatus.SUCCEEDED or bool(output_text)
    )
    held = {Source.FREE: hold.free_micro, Source.BALANCE: hold.balance_micro}
    cost = min(price.cost(usage), sum(held.values())) if ran else 0
    charged = {Source.FREE: min(cost, hold.free_micro)}
    charged[Source.BALANCE] = cost - charged[Source.FREE]
    result = charged[Source.BALANCE], hold.free_micro - charged[Source.FREE]
    key = lock_key(conn, hold.key_id)
    if key is None:
        return result
    now = utcnow()
    before = {Source.BALANCE: int(key.balance_micro or 0), Source.FREE: hold.free_micro}
    rows = [
        _row(hold.key_id, job.id, kind, source, amount, before[source] + change, now)
        for source in (Source.BALANCE, Source.FREE)
        if source == Source.BALANCE or held[source]
        for kind, amount, change in (
            (LedgerKind.HOLD, -held[source], -held[source]),
            (LedgerKind.RELEASE, held[source], 0),
            (LedgerKind.SETTLE, -charged[source], -charged[source]),
        )
    ]
    if not all(insert_ignoring_duplicates(conn, row) for row in rows):
        return result  # settled before: a replayed write changes nothing
    if hold.granted and key.daily_free_micro:
        grant = f"grant:{hold.key_id}:{hold.day}"
        allowance = key.daily_free_micro
        insert_ignoring_duplicates(
            conn,
            _row(
                hold.key_id,
                grant,
                LedgerKind.GRANT,
                Source.FREE,
                allowance,
                allowance,
                now,
            ),
        )
    balance = before[Source.BALANCE]
    free_left = (
        int(key.free_left_micro or 0)
        if key.free_day == hold.day
        else int(key.daily_free_micro or 0)
    )
    conn.execute(
        update(ApiKey)
        .where(ApiKey.id == hold.key_id)
        .values(
            balance_micro=balance - charged[Source.BALANCE],
            free_left_micro=free_left - charged[Source.FREE],
            free_day=hold.day,
        )
    )
    _record_usage(conn, job, hold.key_id, usage, cost, now)
    return result


def _row(
    key_id: str,
    job_id: str,
    kind: LedgerKind,
    source: Source,
    amount: int,
    after: int,
    now: dt.datetime,
) -> dict[str, Any]:
    return {
        "key_id": key_id,
        "job_id": job_id,
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
