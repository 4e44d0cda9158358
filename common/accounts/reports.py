"""What keys have spent: today's totals for ``GET /v1/account``, and usage
pages in the shape of OpenAI's usage API for ``/v1/usage`` and ``/admin/usage``."""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from common.accounts.ledger import JobUsage
from common.accounts.models import ApiKey
from common.accounts.pricing import format_money


def midnight_utc(today: str, timezone: dt.tzinfo) -> dt.datetime:
    """Naive UTC of midnight starting ``today`` (YYYY-MM-DD) in ``timezone``."""
    local = dt.datetime.combine(dt.date.fromisoformat(today), dt.time(), timezone)
    return local.astimezone(dt.UTC).replace(tzinfo=None)


def account(
    engine: Engine,
    key: ApiKey,
    today: str,
    timezone: dt.tzinfo,
    live: tuple[int, int | None, str | None] | None,
) -> dict[str, Any]:
    """The account object of API.md section 8 for ``key``; ``live``: its balance
    less open holds, allowance left and that allowance's day, when Redis has them
    (``Billing.live``)."""
    since = midnight_utc(today, timezone)
    with engine.connect() as conn:
        requests, units_in, units_out, cost = conn.execute(
            select(
                func.count(JobUsage.job_id),
                func.coalesce(func.sum(JobUsage.input_units), 0),
                func.coalesce(func.sum(JobUsage.output_units), 0),
                func.coalesce(func.sum(JobUsage.cost_micro), 0),
            ).where(JobUsage.key_id == key.id, JobUsage.settled_at >= since)
        ).one()
    balance, free_left, free_day = live or (
        key.balance_micro,
        key.free_left_micro,
        key.free_day,
    )
    if free_day != today:
        free_left = key.daily_free_micro
    shown = key.to_dict()
    return {
        "object": "account",
        "key_id": key.id,
        "name": key.name,
        "balance": None if balance is None else format_money(balance),
        "daily_free": shown["daily_free"],
        "free_left_today": format_money(free_left or 0),
        "today": {
            "requests": int(requests),
            "input_tokens": int(units_in),
            "output_tokens": int(units_out),
            "cost": format_money(int(cost)),
        },
        "limits": {"rpm": key.rpm, "tpm": key.tpm, "concurrency": key.concurrency},
        "models": key.models,
        "expires_at": shown["expires_at"],
    }


class BucketWidth(StrEnum):
    """The usage report's bucket sizes, as OpenAI's usage API names them."""

    DAY = "1d"
    HOUR = "1h"


class GroupBy(StrEnum):
    """What one bucket's results are split by."""

    MODEL = "model"
    KEY = "key"


_SECONDS = {BucketWidth.DAY: 86_400, BucketWidth.HOUR: 3_600}


def usage_page(
    engine: Engine,
    *,
    start: int,
    end: int,
    width: BucketWidth,
    group_by: GroupBy | None,
    key_id: str | None,
    limit: int,
    page: int,
) -> dict[str, Any]:
    """OpenAI's usage page: buckets of ``width`` from ``start`` to ``end`` (Unix
    seconds), ``limit`` of them from bucket ``page``, each with one result per
    group (one in all without ``group_by``); settled jobs counted where settled."""
    step = _SECONDS[width]
    count = max(0, -(-(end - start) // step))
    first = start + page * step
    last = min(end, first + limit * step)
    query = select(JobUsage).where(
        JobUsage.settled_at >= _naive(first), JobUsage.settled_at < _naive(last)
    )
    if key_id is not None:
        query = query.where(JobUsage.key_id == key_id)
    totals: dict[tuple[int, str | None], list[int]] = {}
    with Session(engine) as session:
        for row in session.scalars(query):
            at = int(row.settled_at.replace(tzinfo=dt.UTC).timestamp())
            group = None
            if group_by == GroupBy.MODEL:
                group = row.model
            elif group_by == GroupBy.KEY:
                group = row.key_id
            slot = totals.setdefault(((at - start) // step, group), [0, 0, 0, 0])
            for i, value in enumerate(
                (1, row.input_units, row.output_units, row.cost_micro)
            ):
                slot[i] += value
    data = []
    for index in range(page, min(count, page + limit)):
        results = [
            _result(group_by, group, *numbers)
            for (slot, group), numbers in sorted(
                totals.items(), key=lambda item: str(item[0][1])
            )
            if slot == index
        ]
        data.append(
            {
                "object": "bucket",
                "start_time": start + index * step,
                "end_time": min(end, start + (index + 1) * step),
                "results": results,
            }
        )
    more = page + limit < count
    return {
        "object": "page",
        "data": data,
        "has_more": more,
        "next_page": str(page + limit) if more else None,
    }


def _result(
    group_by: GroupBy | None,
    group: str | None,
    requests: int,
    units_in: int,
    units_out: int,
    cost: int,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "object": "usage",
        "num_model_requests": requests,
        "input_tokens": units_in,
        "output_tokens": units_out,
        "cost": format_money(cost),
    }
    if group_by == GroupBy.MODEL:
        result["model"] = group
    elif group_by == GroupBy.KEY:
        result["api_key_id"] = group
    return result


def _naive(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)


def end_of_now() -> int:
    """The default end of a usage report: now, this second's settlements included
    (a report's end is exclusive and settlements are stamped to the µs)."""
    return int(time.time()) + 1


def usage_csv(page: dict[str, Any]) -> str:
    """The page's results as CSV, one line per bucket and group."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for bucket in page["data"]:
        for result in bucket["results"]:
            row = {**result, **bucket}
            writer.writerow([row.get(name) or "" for name in _CSV_COLUMNS])
    return out.getvalue()


_CSV_COLUMNS = (
    "start_time",
    "end_time",
    "model",
    "api_key_id",
    "num_model_requests",
    "input_tokens",
    "output_tokens",
    "cost",
)
