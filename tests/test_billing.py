"""Charging metered keys (API.md section 8): holds at admission, settlement at
the end, exactly once, never more than the key has."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
import redis
import requests
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.accounts.billing import Billing
from common.accounts.ledger import JobUsage, LedgerKind, LedgerRow, Source
from common.accounts.pricing import MICRO, Price, Usage, parse_money
from common.accounts.store import KeyStore
from common.errors import InsufficientQuotaError
from common.jobs.history import JobHistory
from common.jobs.lifecycle import finish_job
from common.jobs.model import EventType, JobStatus
from common.jobs.retention import Retention
from common.jobs.store import JobStore
from common.jsoncodec import dumps
from common.limits import Limiter
from common.redis import keys
from tests.conftest import (
    ADMIN,
    RedisServer,
    Stack,
    base_env,
    chat_body,
    job_fields,
    start_retention,
    start_web,
    start_worker,
    stop_process,
    wait_until,
)
from tests.databases import fresh_postgres

#: The test catalog's fake-model: 0.001 per 1K tokens in, 0.002 out.
FAKE_PRICE = Price(input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
#: What estimate_prompt_tokens makes of chat_body()'s one short message.
PROMPT_ESTIMATE = 5


def metered_key(
    stack: Stack, balance: str, **fields: Any
) -> tuple[str, dict[str, str]]:
    resp = requests.post(
        f"{stack.url}/admin/keys",
        json={"name": f"paid-{uuid.uuid4().hex[:6]}", "balance": balance, **fields},
        headers=ADMIN,
        timeout=10,
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["id"], {"Authorization": f"Bearer {resp.json()['key']}"}


def _ledger(stack: Stack, key_id: str) -> list[dict[str, Any]]:
    """Every row of the key's ledger, page by page."""
    rows: list[dict[str, Any]] = []
    after = None
    while True:
        page = requests.get(
            f"{stack.url}/admin/keys/{key_id}/ledger",
            params={"limit": 100, **({"after": after} if after else {})},
            headers=ADMIN,
            timeout=10,
        ).json()
        rows += page["data"]
        if not page["has_more"]:
            return rows
        after = page["last_id"]


def _settled(stack: Stack, key_id: str, jobs: int) -> list[dict[str, Any]]:
    """The key's ledger once ``jobs`` jobs are settled (each has a settle row)."""

    def done() -> list[dict[str, Any]] | None:
        rows = _ledger(stack, key_id)
        settled = {r["job_id"] for r in rows if r["kind"] == LedgerKind.SETTLE}
        return rows if len(settled) >= jobs else None

    return wait_until(done, 20, f"{jobs} job(s) settled")


def _balance(stack: Stack, key_id: str) -> int:
    shown = requests.get(f"{stack.url}/admin/keys/{key_id}", headers=ADMIN, timeout=10)
    return parse_money(shown.json()["balance"])


def _balance_rows_sum(rows: list[dict[str, Any]]) -> int:
    return sum(parse_money(r["amount"]) for r in rows if r["source"] == Source.BALANCE)


@pytest.fixture(scope="module")
def pg_stack(
    catalog_path: Path, logdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The whole of llmq on a PostgreSQL database of its own: web, worker and
    retention process, as the Procfile runs them."""
    server = RedisServer(tmp_path_factory.mktemp("billing-pg-redis"))
    server.start()
    with fresh_postgres("llmq_billing") as url:
        env = base_env(server.url, catalog_path, url)
        worker = start_worker(env, logdir, "billing-pg-worker")
        web_url, web = start_web(env, logdir, "billing-pg-web")
        retention = start_retention(env, logdir, "billing-pg-retention")
        try:
            yield Stack(web_url, env, server.url)
        finally:
            for proc in (retention, web, worker):
                stop_process(proc)
            server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_stack(request: pytest.FixtureRequest) -> Stack:
    """The session's stack (SQLite), and the PostgreSQL one."""
    name = "stack" if request.param == "sqlite" else "pg_stack"
    return cast(Stack, request.getfixturevalue(name))


def test_a_metered_request_is_held_settled_once_and_shows_the_balance(
    stack: Stack,
) -> None:
    key_id, auth = metered_key(stack, "1")
    resp = requests.post(
        f"{stack.url}/v1/chat/completions",
        json=chat_body(max_tokens=100, fake={"tokens": 5}),
        headers=auth,
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    hold = FAKE_PRICE.cost(Usage(PROMPT_ESTIMATE, 100))
    assert resp.headers["X-Account-Balance"] == "0.999795"
    assert hold == 205
    usage = resp.json()["usage"]
    cost = FAKE_PRICE.cost(Usage(usage["prompt_tokens"], usage["completion_tokens"]))
    rows = _settled(stack, key_id, 1)
    assert [(r["kind"], r["source"], parse_money(r["amount"])) for r in rows] == [
        ("credit", "balance", MICRO),
        ("hold", "balance", -hold),
        ("release", "balance", hold),
        ("settle", "balance", -cost),
    ]
    assert _balance(stack, key_id) == MICRO - cost == _balance_rows_sum(rows)
    models = requests.get(f"{stack.url}/v1/models", headers=auth, timeout=10)
    assert parse_money(models.headers["X-Account-Balance"]) == MICRO - cost


def test_what_the_money_does_not_cover_is_403_insufficient_quota(
    stack: Stack,
) -> None:
    _, auth = metered_key(stack, "0.000001")
    resp = requests.post(
        f"{stack.url}/v1/chat/completions", json=chat_body(), headers=auth, timeout=10
    )
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["code"] == "insufficient_quota"
    assert resp.headers["X-Account-Balance"] == "0.000001"
    envelope = requests.post(
        f"{stack.url}/api/llm/chat", json=chat_body(), headers=auth, timeout=10
    )
    assert envelope.json()["code"] == 403
    _, unmetered = metered_key(stack, "0")
    free = requests.post(
        f"{stack.url}/v1/chat/completions",
        json=chat_body(model="sim-model"),
        headers=unmetered,
        timeout=30,
    )
    assert free.status_code == 200  # a model without a price costs nothing


def test_max_tokens_upstream_is_capped_to_what_the_hold_pays_for(
    stack: Stack, upstream: str
) -> None:
    _, auth = metered_key(stack, "0.0001")  # 100 micro-units
    tag = uuid.uuid4().hex
    resp = requests.post(
        f"{stack.url}/v1/chat/completions",
        json=chat_body(fake={"tokens": 3, "tag": tag}),
        headers=auth,
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    sent = requests.get(f"{upstream}/_requests/{tag}", timeout=5).json()
    # 5 micro-units of input, then 2 per output token: 47 tokens.
    assert sent["max_tokens"] == 47


def test_200_concurrent_requests_never_spend_more_than_the_balance(
    any_stack: Stack,
) -> None:
    stack = any_stack
    worst = FAKE_PRICE.cost(Usage(PROMPT_ESTIMATE, 100))
    key_id, auth = metered_key(stack, str(Decimal(50 * worst) / MICRO))

    def ask(_: int) -> requests.Response:
        return requests.post(
            f"{stack.url}/v1/chat/completions",
            json=chat_body(max_tokens=100, fake={"tokens": 50}),
            headers=auth,
            timeout=60,
        )

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(ask, range(200)))
    ok = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert len(ok) >= 50
    assert {a.json()["error"]["code"] for a in refused} <= {"insufficient_quota"}
    rows = _settled(stack, key_id, len(ok))
    assert min(parse_money(r["balance_after"]) for r in rows) >= 0
    spent = -sum(parse_money(r["amount"]) for r in rows if r["kind"] == "settle")
    assert 0 < spent <= 50 * worst
    assert _balance(stack, key_id) == 50 * worst - spent == _balance_rows_sum(rows)


def test_a_cancelled_stream_is_charged_only_for_what_was_generated(
    any_stack: Stack,
) -> None:
    stack = any_stack
    key_id, auth = metered_key(stack, "1")
    with requests.post(
        f"{stack.url}/v1/chat/completions",
        json=chat_body(
            stream=True, max_tokens=200, fake={"tokens": 100, "delay": 0.05}
        ),
        headers=auth,
        stream=True,
        timeout=30,
    ) as resp:
        job_id = resp.headers["X-Job-Id"]
        lines = resp.iter_lines()
        seen = [line for _, line in zip(range(8), lines, strict=False)]
        assert seen
        cancel = requests.post(
            f"{stack.url}/v1/jobs/{job_id}/cancel", headers=auth, timeout=10
        )
        assert cancel.status_code == 200

    def cancelled() -> dict[str, Any] | None:
        job = requests.get(f"{stack.url}/v1/jobs/{job_id}", headers=auth, timeout=10)
        return job.json() if job.json()["status"] == "cancelled" else None

    job = wait_until(cancelled, 10, "the job to end cancelled")
    usage = job["usage"]
    assert 0 < usage["completion_tokens"] < 100
    rows = _settled(stack, key_id, 1)
    [settle] = [r for r in rows if r["kind"] == "settle"]
    cost = FAKE_PRICE.cost(Usage(usage["prompt_tokens"], usage["completion_tokens"]))
    assert parse_money(settle["amount"]) == -cost
    assert cost < FAKE_PRICE.cost(Usage(usage["prompt_tokens"], 100))


@pytest.fixture
def billing(key_store: KeyStore) -> Billing:
    return Billing(key_store.engine, key_store.redis, ZoneInfo("Asia/Shanghai"))


def test_concurrent_holds_on_any_database_never_exceed_the_balance(
    key_store: KeyStore, billing: Billing
) -> None:
    worst = FAKE_PRICE.cost(Usage(PROMPT_ESTIMATE, 100))
    row, _ = key_store.create("racy", balance=50 * worst)

    def admit(n: int) -> bool:
        try:
            billing.admit(row.id, f"job_{uuid.uuid4().hex}", FAKE_PRICE, 5, 100, 0)
            return True
        except InsufficientQuotaError:
            return False

    with ThreadPoolExecutor(16) as pool:
        admitted = list(pool.map(admit, range(200)))
    assert admitted.count(True) == 50
    assert billing.balance(row.id) == 0  # all of it held, in Redis
    stored = key_store.get(row.id)  # the database learns at settlement
    assert stored is not None and stored.balance_micro == 50 * worst


def test_the_free_allowance_goes_first_and_resets_at_midnight_there(
    key_store: KeyStore,
) -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    now = [dt.datetime(2026, 12, 4, 23, 59, tzinfo=shanghai).timestamp()]
    billing = Billing(key_store.engine, key_store.redis, shanghai, clock=lambda: now[0])
    row, _ = key_store.create("free-first", balance=MICRO, daily_free=100)
    first = billing.admit(row.id, f"job_{uuid.uuid4().hex}", FAKE_PRICE, 5, 100, 0)
    assert (first.free_micro, first.balance_micro) == (100, 105)
    assert billing.live(row.id) == (MICRO - 105, 0, "2026-12-04")
    second = billing.admit(row.id, f"job_{uuid.uuid4().hex}", FAKE_PRICE, 5, 100, 0)
    assert (second.free_micro, second.balance_micro) == (0, 205)
    now[0] += 120  # 00:01 in Shanghai: a new day
    third = billing.admit(row.id, f"job_{uuid.uuid4().hex}", FAKE_PRICE, 5, 100, 0)
    assert (third.free_micro, third.balance_micro) == (100, 105)
    assert billing.live(row.id) == (MICRO - 415, 0, "2026-12-05")


def test_a_job_written_twice_is_settled_once(
    key_store: KeyStore, billing: Billing
) -> None:
    client = key_store.redis
    row, _ = key_store.create("once", balance=MICRO)
    store = JobStore(client, 3600)
    job_id = f"job_{uuid.uuid4().hex}"
    billing.admit(row.id, job_id, FAKE_PRICE, 5, 100, 0)
    store.create(
        job_fields(job_id, owner=row.id, model="fake-model", price=FAKE_PRICE.shown())
    )
    job, _ = store.start(job_id, "run1", 30)
    assert job is not None
    finish_job(
        store,
        Limiter(client),
        job,
        JobStatus.SUCCEEDED,
        expected=(JobStatus.RUNNING,),
        fields={"usage": {"prompt_tokens": 10, "completion_tokens": 20}},
        events=[(EventType.DELTA, dumps({"choices": []}))],
        lease=("drop", "run1"),
    )
    retention = Retention(client, JobHistory(key_store.engine), 60, 0, billing)
    assert retention.write_history() == 1
    # A writer that committed and died before telling Redis: written again.
    client.zadd(keys.HISTORY_UNWRITTEN_KEY, {job_id: 0})
    assert retention.write_history() == 1
    cost = FAKE_PRICE.cost(Usage(10, 20))
    with Session(key_store.engine) as session:
        kinds = session.scalars(
            select(LedgerRow.kind)
            .where(LedgerRow.job_id == job_id)
            .order_by(LedgerRow.id)
        ).all()
        usage = session.get(JobUsage, job_id)
        total = session.scalar(
            select(func.sum(LedgerRow.amount_micro)).where(
                LedgerRow.key_id == row.id, LedgerRow.source == Source.BALANCE
            )
        )
    assert kinds == ["hold", "release", "settle"]
    assert usage is not None and usage.cost_micro == cost and not usage.estimated
    stored = key_store.get(row.id)
    assert stored is not None and stored.balance_micro == MICRO - cost == total
    assert billing.balance(row.id) == MICRO - cost  # the hold ended once in Redis
    assert billing.open_holds([job_id]) == {}


def test_a_hold_whose_job_was_never_stored_is_released(
    key_store: KeyStore, own_redis: RedisServer
) -> None:
    """The web process died between the hold and the job: the reconciler gives
    the money back; a hold whose job exists is left to its settlement."""
    client = redis.Redis.from_url(own_redis.url)
    billing = Billing(key_store.engine, client, ZoneInfo("Asia/Shanghai"))
    row, _ = key_store.create("orphan", balance=MICRO)
    lost, live = f"job_{uuid.uuid4().hex}", f"job_{uuid.uuid4().hex}"
    for job_id in (lost, live):
        billing.admit(row.id, job_id, FAKE_PRICE, 5, 100, 0)
    JobStore(client, 3600).create(job_fields(live, owner=row.id))
    retention = Retention(client, JobHistory(key_store.engine), 60, 0, billing)
    assert retention.release_orphan_holds(3600) == 0  # too young to judge
    time.sleep(1.1)  # holds are stamped in whole seconds
    assert retention.release_orphan_holds(1) == 1
    assert retention.release_orphan_holds(1) == 0
    assert set(billing.open_holds([lost, live])) == {live}
    assert billing.balance(row.id) == MICRO - FAKE_PRICE.cost(Usage(5, 100))


def test_the_account_shows_balance_allowance_and_todays_use(stack: Stack) -> None:
    key_id, auth = metered_key(stack, "1", daily_free="0.0001", rpm=60, models=None)
    before = requests.get(f"{stack.url}/v1/account", headers=auth, timeout=10)
    assert before.status_code == 200, before.text
    assert before.json() == {
        "object": "account",
        "key_id": key_id,
        "name": before.json()["name"],
        "balance": "1",
        "daily_free": "0.0001",
        "free_left_today": "0.0001",
        "today": {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cost": "0"},
        "limits": {"rpm": 60, "tpm": None, "concurrency": None},
        "models": None,
        "expires_at": None,
    }
    assert before.headers["X-Account-Balance"] == "1"
    resp = requests.post(
        f"{stack.url}/v1/chat/completions",
        json=chat_body(max_tokens=100, fake={"tokens": 5}),
        headers=auth,
        timeout=30,
    )
    usage = resp.json()["usage"]
    cost = FAKE_PRICE.cost(Usage(usage["prompt_tokens"], usage["completion_tokens"]))
    _settled(stack, key_id, 1)
    after = requests.get(f"{stack.url}/v1/account", headers=auth, timeout=10).json()
    # The allowance (100 micro-units) pays first; the balance the rest.
    from_free = min(cost, 100)
    assert parse_money(after["free_left_today"]) == 100 - from_free
    assert parse_money(after["balance"]) == MICRO - (cost - from_free)
    assert after["today"] == {
        "requests": 1,
        "input_tokens": usage["prompt_tokens"],
        "output_tokens": usage["completion_tokens"],
        "cost": str(Decimal(cost) / MICRO),
    }
