"""What keys spent, as reports: ``/v1/usage``, ``/admin/usage`` (OpenAI's usage
page, CSV too) and ``flask --app web usage``."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import openai
import requests

from common.accounts.pricing import parse_money
from tests.conftest import ADMIN, ROOT, Stack, wait_until


def _paid_key(stack: Stack) -> tuple[str, str]:
    resp = requests.post(
        f"{stack.url}/admin/keys",
        json={"name": f"report-{uuid.uuid4().hex[:6]}", "balance": "5"},
        headers=ADMIN,
        timeout=10,
    )
    return resp.json()["id"], resp.json()["key"]


def _spend(stack: Stack, key: str, model: str, times: int) -> None:
    sdk = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0)
    for _ in range(times):
        sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=50
        )


def _settled(stack: Stack, key_id: str, jobs: int) -> None:
    def done() -> bool:
        rows = requests.get(
            f"{stack.url}/admin/keys/{key_id}/ledger",
            params={"limit": 100},
            headers=ADMIN,
            timeout=10,
        ).json()["data"]
        return sum(1 for r in rows if r["kind"] == "settle") >= jobs

    wait_until(done, 20, "the jobs to be settled")


def test_a_keys_usage_is_an_openai_usage_page_by_model_and_csv(stack: Stack) -> None:
    key_id, key = _paid_key(stack)
    auth = {"Authorization": f"Bearer {key}"}
    start = int(time.time()) - 60
    _spend(stack, key, "fake-model", 2)
    _spend(stack, key, "chars-model", 1)
    _settled(stack, key_id, 3)
    page = requests.get(
        f"{stack.url}/v1/usage",
        params={"start_time": start, "bucket_width": "1h", "group_by": "model"},
        headers=auth,
        timeout=10,
    )
    assert page.status_code == 200, page.text
    body = page.json()
    assert body["object"] == "page" and body["has_more"] is False
    [bucket] = body["data"]
    assert bucket["object"] == "bucket" and bucket["start_time"] == start
    by_model = {r["model"]: r for r in bucket["results"]}
    assert set(by_model) == {"fake-model", "chars-model"}
    assert by_model["fake-model"]["num_model_requests"] == 2
    assert all(r["object"] == "usage" for r in bucket["results"])
    assert parse_money(by_model["chars-model"]["cost"]) > 0
    account = requests.get(f"{stack.url}/v1/account", headers=auth, timeout=10).json()
    total = sum(parse_money(r["cost"]) for r in bucket["results"])
    assert parse_money(account["today"]["cost"]) == total

    as_csv = requests.get(
        f"{stack.url}/v1/usage",
        params={"start_time": start, "group_by": "model", "format": "csv"},
        headers=auth,
        timeout=10,
    )
    assert as_csv.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert {r["model"]: int(r["num_model_requests"]) for r in rows} == {
        "fake-model": 2,
        "chars-model": 1,
    }
    refused = requests.get(
        f"{stack.url}/v1/usage",
        params={"start_time": start, "group_by": "key"},
        headers=auth,
        timeout=10,
    )
    assert refused.status_code == 400


def test_admin_usage_groups_by_key_over_every_key(stack: Stack) -> None:
    start = int(time.time()) - 60
    ids = []
    for _ in range(2):
        key_id, key = _paid_key(stack)
        _spend(stack, key, "fake-model", 1)
        ids.append(key_id)
    for key_id in ids:
        _settled(stack, key_id, 1)
    page = requests.get(
        f"{stack.url}/admin/usage",
        params={"start_time": start, "group_by": "key"},
        headers=ADMIN,
        timeout=10,
    ).json()
    found: dict[str, Any] = {
        r["api_key_id"]: r for b in page["data"] for r in b["results"]
    }
    assert set(ids) <= set(found)
    assert all(found[i]["num_model_requests"] == 1 for i in ids)
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "flask"),
            "--app",
            "web",
            "usage",
            "--group-by",
            "key",
            "--days",
            "1",
        ],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    listed = {r["api_key_id"] for r in csv.DictReader(io.StringIO(out))}
    assert set(ids) <= listed


def test_pages_of_buckets_follow_next_page(stack: Stack) -> None:
    _, key = _paid_key(stack)
    auth = {"Authorization": f"Bearer {key}"}
    end = int(time.time())

    def page(number: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "start_time": end - 5 * 3600,
            "end_time": end,
            "bucket_width": "1h",
            "limit": 2,
        }
        if number is not None:
            params["page"] = number
        resp = requests.get(
            f"{stack.url}/v1/usage", params=params, headers=auth, timeout=10
        )
        return dict(resp.json())

    pages = [page(None)]
    assert len(pages[0]["data"]) == 2 and pages[0]["has_more"] is True
    while pages[-1]["has_more"]:
        pages.append(page(pages[-1]["next_page"]))
    starts = [b["start_time"] for p in pages for b in p["data"]]
    assert starts == [end - 5 * 3600 + i * 3600 for i in range(5)]
