"""Admin routes for API keys and their money, guarded by ``LLMQ_ADMIN_KEY``."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag

from common.accounts.ledger import LedgerRow
from common.accounts.pricing import format_money
from common.accounts.requests import (
    CreditRequest,
    KeyCreateRequest,
    KeyUpdateRequest,
    LedgerQuery,
    UsageQuery,
)
from common.accounts.store import InsufficientBalanceError, ledger_page
from common.errors import InvalidRequestError, NotFoundError
from common.schemas import KeyPath
from web import auth
from web.account import usage_answer
from web.context import openai_list, services

bp = APIBlueprint("admin", __name__, url_prefix="/admin", abp_tags=[Tag(name="admin")])
bp.before_request(auth.require_admin)


def ledger_entry(row: LedgerRow) -> dict[str, Any]:
    """A ledger row as API.md section 8 shows it, money as decimal strings."""
    return {
        "id": row.id,
        "object": "ledger_entry",
        "kind": row.kind,
        "source": row.source,
        "amount": format_money(row.amount_micro),
        "balance_after": format_money(row.balance_after_micro),
        "job_id": row.job_id,
        "note": row.note,
        "created_at": int(row.created_at.timestamp()),
    }


def _missing(key_id: str) -> NotFoundError:
    return NotFoundError(f"no key {key_id!r}", param="key_id")


@bp.post("/keys")
def create_key(body: KeyCreateRequest) -> tuple[Response, int]:
    """Create a key; the answer is the only time the key itself is shown."""
    row, raw = services().keys.create(**body.model_dump())
    return jsonify({**row.to_dict(), "key": raw}), 201


@bp.get("/keys")
def list_keys() -> Response:
    """Every key, without the keys themselves."""
    rows = services().keys.list()
    return jsonify({"object": "list", "data": [row.to_dict() for row in rows]})


@bp.get("/keys/<key_id>")
def get_key(path: KeyPath) -> Response:
    """One key's details."""
    row = services().keys.get(path.key_id)
    if row is None:
        raise _missing(path.key_id)
    return jsonify(row.to_dict())


@bp.patch("/keys/<key_id>")
def update_key(path: KeyPath, body: KeyUpdateRequest) -> Response:
    """Change a key's name, limits, allow-list, expiry or daily allowance; every
    web process applies it from its next request."""
    changes = body.model_dump(include=body.model_fields_set)
    row = services().keys.update(path.key_id, changes)
    if row is None:
        raise _missing(path.key_id)
    if "daily_free" in changes:
        services().jobs.billing.set_daily_free(path.key_id, changes["daily_free"])
    return jsonify(row.to_dict())


@bp.delete("/keys/<key_id>")
def revoke_key(path: KeyPath) -> Response:
    """Revoke a key: it stops working at once."""
    row = services().keys.revoke(path.key_id)
    if row is None:
        raise _missing(path.key_id)
    return jsonify(row.to_dict())


@bp.post("/keys/<key_id>/credit")
def credit_key(path: KeyPath, body: CreditRequest) -> Response:
    """Add to a key's balance (a negative amount debits); the ledger row."""
    try:
        row = services().jobs.billing.credit(path.key_id, body.amount, body.note)
    except InsufficientBalanceError:
        raise InvalidRequestError(
            "the debit is larger than the key's balance", param="amount"
        ) from None
    if row is None:
        raise _missing(path.key_id)
    return jsonify(ledger_entry(row))


@bp.get("/keys/<key_id>/ledger")
def key_ledger(path: KeyPath, query: LedgerQuery) -> Response:
    """A key's ledger, oldest first, as an OpenAI list."""
    if services().keys.get(path.key_id) is None:
        raise _missing(path.key_id)
    rows, more = ledger_page(
        services().keys.engine, path.key_id, query.after, query.limit
    )
    data = [ledger_entry(row) for row in rows]
    return openai_list(data, more)


@bp.get("/usage")
def all_usage(query: UsageQuery) -> Response:
    """Every key's usage by time bucket, by key or model (``format=csv`` too)."""
    return usage_answer(query, None)
