"""Charging when things break: a worker killed mid-job, a provider that cuts
its stream. Each job is still settled exactly once, for what it used."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy.orm import Session

from common.accounts.ledger import JobUsage
from common.accounts.pricing import MICRO, Usage, parse_money
from common.db.engine import make_engine
from tests.conftest import (
    ADMIN,
    Stack,
    chat_body,
    start_retention,
    start_worker,
    stop_process,
    wait_until,
    web_on_own_redis,
)
from tests.test_billing import FAKE_PRICE, metered_key


@pytest.fixture(scope="module")
def faults(
    catalog_path: Path, logdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A web with short leases and a retention process; tests start workers."""
    with web_on_own_redis(
        "billing-faults",
        catalog_path,
        logdir,
        tmp_path_factory,
        LLMQ_LEASE_SECONDS="2",
    ) as (stack, _):
        retention = start_retention(stack.env, logdir, "billing-faults-retention")
        yield stack
        stop_process(retention)


def _job(stack: Stack, auth: dict[str, str], job_id: str) -> dict[str, Any]:
    return dict(
        requests.get(f"{stack.url}/v1/jobs/{job_id}", headers=auth, timeout=10).json()
    )


def _rows(stack: Stack, key_id: str) -> list[dict[str, Any]]:
    return list(
        requests.get(
            f"{stack.url}/admin/keys/{key_id}/ledger",
            params={"limit": 100},
            headers=ADMIN,
            timeout=10,
        ).json()["data"]
    )


def _settled(stack: Stack, key_id: str) -> list[dict[str, Any]]:
    return wait_until(
        lambda: (
            (rows := _rows(stack, key_id))
            and any(r["kind"] == "settle" for r in rows)
            and rows
        ),
        20,
        "the job to be settled",
    )


def test_a_job_rerun_after_its_worker_was_killed_is_charged_once(
    faults: Stack, logdir: Path
) -> None:
    key_id, auth = metered_key(faults, "1")
    doomed = start_worker(faults.env, logdir, "billing-doomed")
    resp = requests.post(
        f"{faults.url}/v1/jobs",
        json=chat_body(max_tokens=100, fake={"tokens": 30, "delay": 0.1}),
        headers=auth,
        timeout=10,
    )
    job_id = resp.json()["id"]
    wait_until(
        lambda: _job(faults, auth, job_id)["status"] == "running", 10, "the job to run"
    )
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    rescuer = start_worker(faults.env, logdir, "billing-rescuer")
    try:
        job = wait_until(
            lambda: (j := _job(faults, auth, job_id))["status"] == "succeeded" and j,
            40,
            "the job to succeed on the second worker",
        )
        assert job["attempts"] >= 2
        rows = [r for r in _settled(faults, key_id) if r["job_id"] == job_id]
        assert sorted(r["kind"] for r in rows) == ["hold", "release", "settle"]
        usage = job["usage"]
        cost = FAKE_PRICE.cost(
            Usage(usage["prompt_tokens"], usage["completion_tokens"])
        )
        [settle] = [r for r in rows if r["kind"] == "settle"]
        assert parse_money(settle["amount"]) == -cost
    finally:
        stop_process(rescuer)


def test_a_stream_cut_by_the_provider_is_charged_for_what_was_relayed(
    faults: Stack, logdir: Path
) -> None:
    key_id, auth = metered_key(faults, "1")
    worker = start_worker(faults.env, logdir, "billing-cut")
    try:
        resp = requests.post(
            f"{faults.url}/v1/jobs",
            json=chat_body(
                max_tokens=100, fake={"tokens": 40, "cut_after": 12, "usage": False}
            ),
            headers=auth,
            timeout=10,
        )
        job_id = resp.json()["id"]
        job = wait_until(
            lambda: (j := _job(faults, auth, job_id))["status"] == "failed" and j,
            30,
            "the cut job to fail",
        )
        text = job["result"]["choices"][0]["message"]["content"]
        assert text == "".join(f"tok{i} " for i in range(12))
        rows = _settled(faults, key_id)
        usage = job["usage"]
        cost = FAKE_PRICE.cost(
            Usage(usage["prompt_tokens"], usage["completion_tokens"])
        )
        [settle] = [r for r in rows if r["kind"] == "settle"]
        assert parse_money(settle["amount"]) == -cost > -MICRO
        engine = make_engine(faults.env["DATABASE_URL"])
        with Session(engine) as session:
            recorded = session.get(JobUsage, job_id)
        engine.dispose()
        assert recorded is not None and recorded.estimated
        assert recorded.output_units == usage["completion_tokens"]
    finally:
        stop_process(worker)
