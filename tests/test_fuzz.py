"""Property-based fuzz of every route that takes a JSON body (issue 15, point 5).

Hypothesis generates request bodies three ways: any JSON value, raw bytes that are
not JSON at all (or not UTF-8, or nest too deep), and one valid body of the route
with a few of its fields replaced, dropped or added, so validation deep inside is
reached too. Each goes out with one of several content types. Whatever arrives,
the answer comes within ``ANSWER_SECONDS`` (streams read to their end), is never a
5xx, and an error is the JSON body API.md section 2 documents for that route's
family. ``make test`` runs the "ci" profile's few examples; ``make fuzz`` many more.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from hypothesis import event, given, note
from hypothesis import strategies as st

from tests.conftest import ADMIN_KEY, Stack, chat_body
from tests.fuzz_bodies import (
    ANY_JSON,
    CODE_STATUS,
    CONTENT_TYPES,
    ROUTES,
    Route,
    encode,
    mutated_body,
    not_json,
    odd_bytes,
)

#: Longest an answer may take, a stream read to its end included; past it, a hang.
ANSWER_SECONDS = 15.0

# ------------------------------------------------------------------ requests


@dataclass(frozen=True)
class Target:
    """Where one test posts, and with which key."""

    url: str
    route: Route
    headers: dict[str, str]
    api_key: str


@pytest.fixture
def target(stack: Stack, api_key: str, route: Route) -> Target:
    """The route's URL for this test's key (cancel: a job of this key)."""
    auth = {"Authorization": f"Bearer {ADMIN_KEY if route.admin else api_key}"}
    path = route.path
    if "{job_id}" in path:
        job = requests.post(
            f"{stack.url}/v1/jobs", json=chat_body(), headers=auth, timeout=10
        )
        assert job.status_code == 202, job.text
        path = path.format(job_id=job.json()["id"])
    return Target(f"{stack.url}{path}", route, auth, api_key)


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def post(
    target: Target, body: bytes, content_type: str | None, header_key: bool = True
) -> Answer:
    """POST ``body``; read the whole answer, failing if that takes too long."""
    headers = dict(target.headers) if header_key else {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    note(f"POST {target.url} Content-Type: {content_type!r} headers: {headers}")
    note(f"body ({len(body)} bytes): {body[:2000]!r}")
    deadline = time.monotonic() + ANSWER_SECONDS
    try:
        with requests.post(
            target.url, data=body, headers=headers, timeout=ANSWER_SECONDS, stream=True
        ) as resp:
            chunks = []
            for chunk in resp.iter_content(chunk_size=None):
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    pytest.fail(f"hang: the answer took over {ANSWER_SECONDS} s")
            return Answer(
                resp.status_code, resp.headers.get("Content-Type", ""), b"".join(chunks)
            )
    except requests.Timeout:
        pytest.fail(f"hang: no answer within {ANSWER_SECONDS} s")


def assert_documented(route: Route, answer: Answer) -> None:
    """No 5xx; an error is JSON in the route family's documented shape."""
    event(f"status {answer.status}")  # --hypothesis-show-statistics counts them
    assert answer.status < 500, answer.body[:2000]
    if answer.status < 400:
        return
    assert answer.content_type.startswith("application/json"), answer.content_type
    body = json.loads(answer.body)
    note(f"answer {answer.status}: {body}")
    if route.surface == "envelope":
        assert set(body) == {"code", "message", "data"}
        assert body["code"] == answer.status and body["data"] is None
        assert isinstance(body["message"], str) and body["message"]
        assert answer.status in CODE_STATUS.values()
        return
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] is None or isinstance(error["param"], str)
    assert CODE_STATUS.get(error["code"]) == answer.status, error
    event(f"code {error['code']}")


def assert_invalid_json(route: Route, answer: Answer) -> None:
    assert_documented(route, answer)
    assert answer.status == 400, answer.body[:2000]
    if route.surface == "openai":
        assert json.loads(answer.body)["error"]["code"] == "invalid_json"


# --------------------------------------------------------------------- tests

ROUTE_PARAM = pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
CONTENT_TYPE = st.sampled_from(CONTENT_TYPES)


@ROUTE_PARAM
@given(value=ANY_JSON, content_type=CONTENT_TYPE, ascii_only=st.booleans())
def test_any_json_value_gets_a_documented_answer(
    target: Target, route: Route, value: Any, content_type: str | None, ascii_only: bool
) -> None:
    answer = post(target, encode(value, ascii_only), content_type)
    assert_documented(route, answer)


@ROUTE_PARAM
@given(data=st.data(), content_type=CONTENT_TYPE)
def test_bytes_that_are_not_json_get_invalid_json(
    target: Target, route: Route, data: st.DataObject, content_type: str | None
) -> None:
    body = data.draw(not_json(route))
    answer = post(target, body, content_type)
    # Only the cancel route reads no body: an empty or multipart one it lets be.
    lets_be = route.ignores_body and (
        not body or (content_type or "").startswith("multipart/")
    )
    if lets_be:
        assert_documented(route, answer)
    else:
        assert_invalid_json(route, answer)


@ROUTE_PARAM
@given(data=st.data(), content_type=CONTENT_TYPE)
def test_odd_bytes_get_a_documented_answer(
    target: Target, route: Route, data: st.DataObject, content_type: str | None
) -> None:
    answer = post(target, data.draw(odd_bytes(route)), content_type)
    assert_documented(route, answer)


@ROUTE_PARAM
@given(
    data=st.data(),
    content_type=st.sampled_from(CONTENT_TYPES[:1] * 4 + CONTENT_TYPES),
    ascii_only=st.booleans(),
)
def test_a_valid_body_mutated_gets_a_documented_answer(
    target: Target,
    route: Route,
    data: st.DataObject,
    content_type: str | None,
    ascii_only: bool,
) -> None:
    body = data.draw(mutated_body(route, target.api_key))
    key_in_body = route.surface == "envelope" and "api_key" in body
    answer = post(target, encode(body, ascii_only), content_type, not key_in_body)
    assert_documented(route, answer)
