"""Rate and concurrency limits: the Redis scripts, then the front door and a worker."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
import requests

from common.limits import BULK_LEAD_SECONDS, TPM_BURST_SECONDS, Limiter, Rate
from tests.conftest import RedisServer, Stack, chat_body


@pytest.fixture
def limiter(redis_server: RedisServer) -> Limiter:
    return Limiter(redis.Redis.from_url(redis_server.url))


def scope() -> str:
    return f"test:{uuid.uuid4().hex}"


def test_rpm_reservations_are_spaced_evenly_with_no_burst(limiter: Limiter) -> None:
    rpm = Rate(scope(), "rpm", 600)
    waits = [limiter.reserve([(rpm, 1)]) for _ in range(5)]
    assert waits[0] == 0
    # Every request but the first may go up to the bulk lead early, no more.
    for i, wait in enumerate(waits[1:], 1):
        assert wait == pytest.approx(i * 0.1 - BULK_LEAD_SECONDS, abs=0.02)


def test_tpm_allows_a_burst_then_charges_tokens(limiter: Limiter) -> None:
    tpm = Rate(scope(), "tpm", 60_000)  # 1,000 tokens a second
    burst = int(TPM_BURST_SECONDS)  # seconds of tokens that may go at once
    waits = [limiter.reserve([(tpm, 1000)]) for _ in range(burst + 3)]
    assert waits[: burst + 1] == [0.0] * (burst + 1)
    assert waits[burst + 1] == pytest.approx(1.0, abs=0.05)
    assert waits[burst + 2] == pytest.approx(2.0, abs=0.05)


def test_settling_unused_tokens_gives_the_time_back(limiter: Limiter) -> None:
    tpm = Rate(scope(), "tpm", 60_000)
    for _ in range(int(TPM_BURST_SECONDS) + 1):
        limiter.reserve([(tpm, 1000)])
    assert limiter.reserve([(tpm, 1000)]) > 0.9
    limiter.settle(tpm, -5000)
    assert limiter.reserve([(tpm, 1000)]) == 0.0


def test_several_limits_are_reserved_together(limiter: Limiter) -> None:
    fast, slow = Rate(scope(), "rpm", 6000), Rate(scope(), "rpm", 600)
    limiter.reserve([(fast, 1), (slow, 1)])
    # The slower limit decides, and both move on.
    second = limiter.reserve([(fast, 1), (slow, 1)])
    assert second == pytest.approx(0.1 - BULK_LEAD_SECONDS, abs=0.02)
    third = limiter.reserve([(fast, 1)])
    assert third == pytest.approx(second + 0.01 - BULK_LEAD_SECONDS, abs=0.02)


def test_admission_allows_a_minute_of_requests_then_denies(limiter: Limiter) -> None:
    rpm = Rate(scope(), "rpm", 3)
    answers = [limiter.admit([(rpm, 1)]) for _ in range(4)]
    assert [a.admitted for a in answers] == [True, True, True, False]
    assert [a.remaining["rpm"] for a in answers[:3]] == [2, 1, 0]
    assert answers[3].retry_after_seconds == pytest.approx(20, abs=0.1)
    assert answers[2].reset_seconds["rpm"] == pytest.approx(60, abs=0.1)


def test_a_denied_admission_uses_up_nothing(limiter: Limiter) -> None:
    rpm, tpm = Rate(scope(), "rpm", 100), Rate(scope(), "tpm", 1000)
    assert not limiter.admit([(rpm, 1), (tpm, 1500)]).admitted
    assert limiter.admit([(rpm, 1)]).remaining["rpm"] == 99


def test_slots_are_all_or_nothing_and_free_themselves(limiter: Limiter) -> None:
    a, b = scope(), scope()
    assert limiter.acquire_slots("job1", [(a, 1), (b, 2)], 0.3)
    assert not limiter.acquire_slots("job2", [(a, 1), (b, 2)], 0.3)
    assert limiter.acquire_slots("job3", [(b, 2)], 0.3), "b was not taken by job2"
    time.sleep(0.35)  # nobody renewed: the holders' slots lapse
    assert limiter.acquire_slots("job2", [(a, 1), (b, 2)], 5)
    limiter.release_slots("job2", [a, b])
    assert limiter.acquire_slots("job4", [(a, 1)], 5)


@pytest.mark.parametrize(
    ("unit", "limit", "units"),
    [("rpm", 10_000, 1), ("tpm", 1_000_000, 1_000), ("tpm", 100_000_000, 1_000)],
)
def test_realistic_limits_reserve_admit_and_settle(
    limiter: Limiter, unit: str, limit: int, units: int
) -> None:
    """A unit of these limits is a fraction of a millisecond (6 ms / 10,000 rpm,
    60 µs a token at 1M tpm, 0.6 µs at 100M): Redis refused the fractional
    expiry the scripts once computed."""
    rate = Rate(scope(), unit, limit)
    assert limiter.reserve([(rate, units)]) == 0.0
    admitted = limiter.admit([(Rate(scope(), unit, limit), units)])
    assert admitted.admitted
    assert admitted.remaining[unit] == limit - units
    limiter.settle(rate, -units)
    limiter.settle(rate, units)


def test_a_10000_rpm_limit_spaces_requests_6_ms_apart(limiter: Limiter) -> None:
    rpm = Rate(scope(), "rpm", 10_000)
    waits = [limiter.reserve([(rpm, 1)]) for _ in range(50)]
    assert waits[-1] == pytest.approx(49 * 0.006 - BULK_LEAD_SECONDS, abs=0.02)


def test_a_100m_tpm_limit_counts_a_minute_of_tokens_exactly(limiter: Limiter) -> None:
    tpm = Rate(scope(), "tpm", 100_000_000)
    assert limiter.admit([(tpm, 60_000_000)]).remaining["tpm"] == 40_000_000
    assert limiter.admit([(tpm, 40_000_000)]).admitted
    denied = limiter.admit([(tpm, 1_000_000)])
    assert not denied.admitted
    assert denied.retry_after_seconds == pytest.approx(0.6, abs=0.1)


def test_a_key_with_a_million_tpm_is_served(stack: Stack) -> None:
    """At the front door: such a key got 503 on every request."""
    key = stack.key(rpm=5, tpm=1_000_000)
    resp = requests.post(
        f"{stack.url}/v1/chat/completions",
        json=chat_body(),
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-ratelimit-limit-tokens"] == "1000000"
    assert int(resp.headers["x-ratelimit-remaining-tokens"]) > 990_000


def test_a_worker_runs_jobs_under_100m_provider_and_1m_model_tpm(
    stack: Stack, api_key: str
) -> None:
    """In the worker: the catalog's vast provider (10,000 rpm, 100M tpm) and its
    model (1M tpm) reserve on every call."""
    resp = requests.post(
        f"{stack.url}/v1/chat/completions",
        json=chat_body(model="vast-model"),
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"]


def test_bulk_takes_only_free_capacity_and_never_delays_interactive(
    limiter: Limiter,
) -> None:
    rpm = Rate(scope(), "rpm", 6000)  # 10 ms a request
    granted = 0
    while limiter.reserve_bulk([(rpm, 1)]) == 0.0:
        granted += 1
    # Bulk may run its lead ahead of now (30 ms: 3 requests), no further...
    assert granted == pytest.approx(BULK_LEAD_SECONDS / 0.01, abs=1)
    assert limiter.reserve_bulk([(rpm, 1)]) > 0
    # ...and an interactive call after it goes at once.
    assert limiter.reserve([(rpm, 1)]) == pytest.approx(0.0, abs=0.005)
    # Interactive reservations queued ahead make bulk wait for them.
    for _ in range(5):
        limiter.reserve([(rpm, 1)])
    assert limiter.reserve_bulk([(rpm, 1)]) == pytest.approx(0.05, abs=0.02)
