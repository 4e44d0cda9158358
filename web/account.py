"""A key's own account: ``GET /v1/account`` (seed 004's account page) and its
usage, ``GET /v1/usage`` (OpenAI's usage page)."""

from __future__ import annotations

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag

from common.accounts.reports import (
    GroupBy,
    account,
    end_of_now,
    usage_csv,
    usage_page,
)
from common.accounts.requests import UsageQuery
from common.errors import InvalidRequestError
from web import auth
from web.context import services

bp = APIBlueprint("account", __name__, abp_tags=[Tag(name="account")])
bp.before_request(auth.require_key)


@bp.get("/v1/account")
def get_account() -> Response:
    """The key's balance, free allowance left today, today's use and its limits."""
    svc = services()
    key = svc.keys.get(auth.caller().id)
    assert key is not None  # the key was just authenticated
    billing = svc.jobs.billing
    return jsonify(
        account(
            svc.keys.engine,
            key,
            billing.today(),
            billing.timezone,
            billing.live(key.id),
        )
    )


def usage_answer(query: UsageQuery, key_id: str | None) -> Response:
    """The usage page (or its CSV) of one key, or of every key for ``None``."""
    end = query.end_time if query.end_time is not None else end_of_now()
    if end <= query.start_time:
        raise InvalidRequestError("end_time must be after start_time", param="end_time")
    page = usage_page(
        services().keys.engine,
        start=query.start_time,
        end=end,
        width=query.bucket_width,
        group_by=query.group_by,
        key_id=key_id,
        limit=query.limit,
        page=query.page,
    )
    if query.format == "csv":
        return Response(usage_csv(page), mimetype="text/csv")
    return jsonify(page)


@bp.get("/v1/usage")
def get_usage(query: UsageQuery) -> Response:
    """This key's usage by time bucket (OpenAI's usage page; ``format=csv``)."""
    if query.group_by == GroupBy.KEY:
        raise InvalidRequestError(
            "a key's usage groups by model only", param="group_by"
        )
    return usage_answer(query, auth.caller().id)
