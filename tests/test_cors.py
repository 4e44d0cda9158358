"""CORS: web pages on other origins may call llmq (API.md §1, seed 000)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from common.config import ConfigError, load_settings
from tests.conftest import Stack, chat_body, sse_events, web_on_own_redis

ORIGIN = "https://app.example"
#: Every request header a client of llmq may send from a page.
REQUEST_HEADERS = (
    "Authorization",
    "X-API-Key",
    "Content-Type",
    "X-AI-Provider",
    "Idempotency-Key",
    "Last-Event-ID",
    "X-LLMQ-Detach",
    "X-Request-Id",
)
#: Every answer header a page's script must be able to read.
EXPOSED_HEADERS = (
    "X-Job-Id",
    "X-Account-Balance",
    "Retry-After",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)
LISTED_ORIGINS = ("https://a.example", "http://localhost:5173")


def names(resp: requests.Response, header: str) -> set[str]:
    """The comma-separated names of a CORS header, lower-cased."""
    return {
        name.strip().lower()
        for name in resp.headers.get(header, "").split(",")
        if name.strip()
    }


def preflight(
    url: str, method: str, origin: str = ORIGIN, headers: tuple[str, ...] = ()
) -> requests.Response:
    """What a browser sends before a cross-origin request that needs one."""
    return requests.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": ", ".join(headers or REQUEST_HEADERS),
        },
        timeout=10,
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("POST", "/providers/fake/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/job_0123/events"),
        ("POST", "/api/llm/chat"),
        ("POST", "/ai_api/llm"),
        ("GET", "/admin/keys"),
    ],
)
def test_a_preflight_is_answered_without_a_key_and_allows_every_request_header(
    stack: Stack, method: str, path: str
) -> None:
    resp = preflight(f"{stack.url}{path}", method)
    assert 200 <= resp.status_code < 300, resp.text
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert method.lower() in names(resp, "Access-Control-Allow-Methods")
    assert {h.lower() for h in REQUEST_HEADERS} <= names(
        resp, "Access-Control-Allow-Headers"
    )


def test_a_preflight_reflects_headers_it_does_not_know(stack: Stack) -> None:
    """Browser SDKs add their own headers (OpenAI's ``x-stainless-*``)."""
    resp = preflight(
        f"{stack.url}/v1/chat/completions",
        "POST",
        headers=("authorization", "x-stainless-os", "x-stainless-retry-count"),
    )
    assert resp.ok
    assert names(resp, "Access-Control-Allow-Headers") == {
        "authorization",
        "x-stainless-os",
        "x-stainless-retry-count",
    }


def test_a_cross_origin_answer_exposes_job_and_rate_limit_headers(
    stack: Stack,
) -> None:
    key = stack.key(rpm=60, tpm=1_000_000)
    resp = requests.post(
        f"{stack.url}/v1/chat/completions",
        json=chat_body(),
        headers={"Origin": ORIGIN, "Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert {h.lower() for h in EXPOSED_HEADERS} <= names(
        resp, "Access-Control-Expose-Headers"
    )
    assert resp.headers["X-Job-Id"].startswith("job_")
    assert resp.headers["x-ratelimit-remaining-requests"] == "59"


def _stream_chat(stack: Stack, auth: dict[str, str]) -> requests.Response:
    return requests.post(
        f"{stack.url}/v1/chat/completions",
        json=chat_body(stream=True),
        headers={"Origin": ORIGIN, **auth},
        stream=True,
        timeout=30,
    )


def _follow_job(stack: Stack, auth: dict[str, str]) -> requests.Response:
    job = requests.post(
        f"{stack.url}/v1/jobs", json=chat_body(), headers=auth, timeout=10
    ).json()
    return requests.get(
        f"{stack.url}/v1/jobs/{job['id']}/events",
        headers={"Origin": ORIGIN, **auth},
        stream=True,
        timeout=30,
    )


@pytest.mark.parametrize("open_stream", [_stream_chat, _follow_job])
def test_a_cross_origin_stream_carries_the_cors_headers(
    stack: Stack,
    auth: dict[str, str],
    open_stream: Callable[[Stack, dict[str, str]], requests.Response],
) -> None:
    with open_stream(stack, auth) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "x-job-id" in names(resp, "Access-Control-Expose-Headers")
        events = list(sse_events(resp))
    assert events[-1].get("data") == "[DONE]" or events[-1].get("event") == "done"


def _without_key(stack: Stack) -> requests.Response:
    return requests.post(
        f"{stack.url}/v1/chat/completions",
        json=chat_body(),
        headers={"Origin": ORIGIN},
        timeout=10,
    )


def _unknown_job(stack: Stack) -> requests.Response:
    return requests.get(
        f"{stack.url}/v1/jobs/job_0123",
        headers={"Origin": ORIGIN, "Authorization": f"Bearer {stack.key()}"},
        timeout=10,
    )


def _over_rpm(stack: Stack) -> requests.Response:
    auth = {"Authorization": f"Bearer {stack.key(rpm=1)}"}
    first = requests.post(
        f"{stack.url}/v1/jobs", json=chat_body(), headers=auth, timeout=10
    )
    assert first.status_code == 202, first.text
    return requests.post(
        f"{stack.url}/v1/jobs",
        json=chat_body(),
        headers={"Origin": ORIGIN, **auth},
        timeout=10,
    )


@pytest.mark.parametrize(
    ("answer", "status"), [(_without_key, 401), (_unknown_job, 404), (_over_rpm, 429)]
)
def test_a_cross_origin_error_carries_the_cors_headers(
    stack: Stack, answer: Callable[[Stack], requests.Response], status: int
) -> None:
    resp = answer(stack)
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert {"retry-after", "x-job-id"} <= names(resp, "Access-Control-Expose-Headers")


@pytest.fixture(scope="module")
def listed(
    catalog_path: Path, logdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A web process that serves only the pages of ``LISTED_ORIGINS``."""
    with web_on_own_redis(
        "cors",
        catalog_path,
        logdir,
        tmp_path_factory,
        LLMQ_CORS_ORIGINS=" , ".join(LISTED_ORIGINS),
    ) as (stack, _):
        yield stack


def preflight_and_request(stack: Stack, origin: str) -> list[requests.Response]:
    """A preflight from ``origin`` and the (keyless, so 401) request it asks for."""
    answers = [
        preflight(f"{stack.url}/v1/chat/completions", "POST", origin),
        requests.post(
            f"{stack.url}/v1/chat/completions",
            json=chat_body(),
            headers={"Origin": origin},
            timeout=10,
        ),
    ]
    assert [r.status_code for r in answers] == [200, 401]
    return answers


@pytest.mark.parametrize("origin", [*LISTED_ORIGINS, "HTTPS://A.EXAMPLE"])
def test_a_listed_origin_is_echoed(listed: Stack, origin: str) -> None:
    answers = preflight_and_request(listed, origin)
    for resp in answers:
        assert resp.headers["Access-Control-Allow-Origin"] == origin
        assert "origin" in names(resp, "Vary")


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://a.example",  # another scheme is another origin
        "https://a.example.evil.example",  # a listed origin as a prefix
        "https://a.example:8443",
        "null",
    ],
)
def test_an_unlisted_origin_gets_no_allow_origin(listed: Stack, origin: str) -> None:
    answers = preflight_and_request(listed, origin)
    for resp in answers:
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert "Access-Control-Allow-Headers" not in resp.headers


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        (None, ("*",)),
        ("", ("*",)),
        ("*", ("*",)),
        ("https://a.example", ("https://a.example",)),
        (
            " https://a.example,http://[::1]:5173 , ",
            ("https://a.example", "http://[::1]:5173"),
        ),
    ],
)
def test_cors_origins_are_read_from_llmq_cors_origins(
    catalog_path: Path, value: str | None, origins: tuple[str, ...]
) -> None:
    env = {"LLMQ_CATALOG": str(catalog_path)}
    if value is not None:
        env["LLMQ_CORS_ORIGINS"] = value
    assert load_settings(env).cors_origins == origins


@pytest.mark.parametrize(
    "value",
    [
        "https://a.example/",  # browsers send no path: this would never match
        "a.example",
        "https://a.example?x=1",
        "*, https://a.example",
        " , ",
    ],
)
def test_a_malformed_cors_origin_fails_at_startup(
    catalog_path: Path, value: str
) -> None:
    with pytest.raises(ConfigError, match="LLMQ_CORS_ORIGINS"):
        load_settings({"LLMQ_CATALOG": str(catalog_path), "LLMQ_CORS_ORIGINS": value})
