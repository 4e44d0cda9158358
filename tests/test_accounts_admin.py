"""Keys' money from the admin API and the CLI: credits, debits, the ledger and
changes that every web process applies on its next request (API.md section 8)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.accounts.ledger import LedgerKind, LedgerRow, Source
from common.accounts.pricing import MICRO
from common.accounts.store import (
    InsufficientBalanceError,
    KeyStore,
    credit,
    ledger_page,
)
from tests.conftest import ADMIN, Stack
from tests.test_keys import _flask


def _admin(stack: Stack, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(
        method, f"{stack.url}/admin{path}", headers=ADMIN, timeout=10, **kwargs
    )


def _balance_is_its_ledger(store: KeyStore, key_id: str) -> int:
    """The key's balance, checked to be the sum of its balance-sourced rows."""
    with Session(store.engine) as session:
        total = session.scalar(
            select(func.coalesce(func.sum(LedgerRow.amount_micro), 0)).where(
                LedgerRow.key_id == key_id, LedgerRow.source == Source.BALANCE
            )
        )
    row = store.get(key_id)
    assert row is not None and row.balance_micro == total
    return int(total or 0)


def test_credits_and_debits_are_ledger_rows_and_never_go_below_zero(
    stack: Stack,
) -> None:
    created = _admin(stack, "POST", "/keys", json={"name": "paid", "balance": "10"})
    key_id = created.json()["id"]
    up = _admin(
        stack, "POST", f"/keys/{key_id}/credit", json={"amount": 2.5, "note": "topup"}
    )
    assert up.status_code == 200, up.text
    assert (up.json()["amount"], up.json()["balance_after"]) == ("2.5", "12.5")
    down = _admin(stack, "POST", f"/keys/{key_id}/credit", json={"amount": "-12.5"})
    assert down.json()["balance_after"] == "0"
    refused = _admin(stack, "POST", f"/keys/{key_id}/credit", json={"amount": -1})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid_params"
    assert refused.json()["error"]["param"] == "amount"
    assert _admin(stack, "GET", f"/keys/{key_id}").json()["balance"] == "0"

    ledger = _admin(stack, "GET", f"/keys/{key_id}/ledger").json()
    assert ledger["object"] == "list" and ledger["has_more"] is False
    assert [
        (e["kind"], e["source"], e["amount"], e["balance_after"], e["note"])
        for e in ledger["data"]
    ] == [
        ("credit", "balance", "10", "10", "opening balance"),
        ("credit", "balance", "2.5", "12.5", "topup"),
        ("credit", "balance", "-12.5", "0", None),
    ]
    page = _admin(stack, "GET", f"/keys/{key_id}/ledger", params={"limit": 1}).json()
    assert page["has_more"] is True and len(page["data"]) == 1
    rest = _admin(
        stack,
        "GET",
        f"/keys/{key_id}/ledger",
        params={"after": page["last_id"], "limit": 5},
    ).json()
    assert [e["id"] for e in page["data"] + rest["data"]] == [
        e["id"] for e in ledger["data"]
    ]


@pytest.mark.parametrize(
    "body",
    [{"amount": 0.0000001}, {"amount": "ten"}, {"amount": 10**12}, {"note": "x"}],
    ids=str,
)
def test_a_credit_that_is_not_an_amount_is_400(
    stack: Stack, body: dict[str, Any]
) -> None:
    key_id = _admin(stack, "POST", "/keys", json={"name": "k"}).json()["id"]
    resp = _admin(stack, "POST", f"/keys/{key_id}/credit", json=body)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_params"


def test_money_routes_of_a_missing_key_are_404(stack: Stack) -> None:
    for method, path, body in [
        ("POST", "/keys/key_missing/credit", {"amount": 1}),
        ("GET", "/keys/key_missing/ledger", None),
        ("PATCH", "/keys/key_missing", {"rpm": 5}),
    ]:
        assert _admin(stack, method, path, json=body).status_code == 404


def test_a_patch_applies_on_the_next_request(stack: Stack) -> None:
    created = _admin(stack, "POST", "/keys", json={"name": "p"}).json()
    auth = {"Authorization": f"Bearer {created['key']}"}
    models = requests.get(f"{stack.url}/v1/models", headers=auth, timeout=10).json()
    assert len(models["data"]) > 1
    patched = _admin(
        stack,
        "PATCH",
        f"/keys/{created['id']}",
        json={"models": ["sim-model"], "rpm": 7, "daily_free": "0.5"},
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["rpm"], patched.json()["daily_free"]) == (7, "0.5")
    models = requests.get(f"{stack.url}/v1/models", headers=auth, timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["sim-model"]
    cleared = _admin(stack, "PATCH", f"/keys/{created['id']}", json={"models": None})
    assert cleared.json()["models"] is None and cleared.json()["rpm"] == 7
    expired = _admin(
        stack,
        "PATCH",
        f"/keys/{created['id']}",
        json={"expires_at": "2001-01-01T00:00:00Z"},
    )
    assert expired.status_code == 200
    resp = requests.get(f"{stack.url}/v1/models", headers=auth, timeout=10)
    assert resp.status_code == 401
    bad = _admin(stack, "PATCH", f"/keys/{created['id']}", json={"balance": 5})
    assert bad.status_code == 400  # the balance changes only through credits


def test_the_cli_creates_metered_keys_and_credits_them(stack: Stack) -> None:
    key_id, _, _ = _flask(
        stack.env, "create", "--name", "cli-paid", "--balance", "3.25"
    ).split("\t")
    assert _flask(stack.env, "credit", key_id, "1.75", "--note", "cash") == (
        f"{key_id}\tbalance 5"
    )
    assert any(
        line.startswith(key_id) and line.endswith("\tactive\t5")
        for line in _flask(stack.env, "list").splitlines()
    )
    ledger = _admin(stack, "GET", f"/keys/{key_id}/ledger").json()["data"]
    assert [e["amount"] for e in ledger] == ["3.25", "1.75"]


def test_concurrent_debits_never_take_a_balance_below_zero(key_store: KeyStore) -> None:
    store = key_store
    row, _ = store.create("racy", balance=50 * MICRO)

    def debit(_: int) -> bool:
        try:
            return credit(store.engine, row.id, -MICRO) is not None
        except InsufficientBalanceError:
            return False

    with ThreadPoolExecutor(16) as pool:
        done = list(pool.map(debit, range(80)))
    assert done.count(True) == 50
    assert _balance_is_its_ledger(store, row.id) == 0
    rows, more = ledger_page(store.engine, row.id, None, 100)
    assert len(rows) == 51 and not more
    assert all(r.kind == LedgerKind.CREDIT for r in rows)
    assert min(r.balance_after_micro for r in rows) == 0


def test_a_credit_to_an_unmetered_key_meters_it(key_store: KeyStore) -> None:
    store = key_store
    row, _ = store.create("free")
    assert credit(store.engine, row.id, 3 * MICRO) is not None
    assert _balance_is_its_ledger(store, row.id) == 3 * MICRO
    assert credit(store.engine, "key_missing", MICRO) is None
