"""Every error row of API.md section 2 that the foundation touches, on every route."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import openai
import pytest
import redis
import requests

from common.jsoncodec import MAX_REQUEST_DEPTH
from common.redis.keys import owner_jobs_key
from tests.conftest import ADMIN, ADMIN_KEY, Stack, chat_body

MSG = [{"role": "user", "content": "hi"}]

#: (route, how an error body looks there)
CHAT_ROUTES = [
    ("/v1/chat/completions", "openai"),
    ("/v1/jobs", "openai"),
    ("/api/llm/chat", "envelope"),
]

BAD_BODIES: list[tuple[str, Any, str]] = [
    ("no model", {"messages": MSG}, "invalid_model"),
    ("unknown model", {"model": "nope", "messages": MSG}, "invalid_model"),
    ("wrong type of model", {"model": "embed-model", "messages": MSG}, "invalid_model"),
    ("disabled model", {"model": "locked-model", "messages": MSG}, "invalid_model"),
    ("model not a string", {"model": 3, "messages": MSG}, "invalid_model"),
    ("no messages", {"model": "fake-model"}, "invalid_messages"),
    ("empty messages", {"model": "fake-model", "messages": []}, "invalid_messages"),
    (
        "messages not a list",
        {"model": "fake-model", "messages": "hi"},
        "invalid_messages",
    ),
    (
        "bad role",
        {"model": "fake-model", "messages": [{"role": "robot", "content": "x"}]},
        "invalid_messages",
    ),
    (
        "bad content",
        {"model": "fake-model", "messages": [{"role": "user", "content": 5}]},
        "invalid_messages",
    ),
    (
        "no content",
        {"model": "fake-model", "messages": [{"role": "user"}]},
        "invalid_messages",
    ),
    ("temperature 2", chat_body(temperature=2), "invalid_params"),
    ("temperature a string", chat_body(temperature="hot"), "invalid_params"),
    ("top_p 0", chat_body(top_p=0), "invalid_params"),
    ("top_p above 1", chat_body(top_p=1.5), "invalid_params"),
    ("presence_penalty 3", chat_body(presence_penalty=3), "invalid_params"),
    ("frequency_penalty -3", chat_body(frequency_penalty=-3), "invalid_params"),
    ("max_tokens 0", chat_body(max_tokens=0), "invalid_params"),
    ("max_tokens a float", chat_body(max_tokens=1.5), "invalid_params"),
    ("five stops", chat_body(stop=["a", "b", "c", "d", "e"]), "invalid_params"),
    ("n 2", chat_body(n=2), "invalid_params"),
    ("stream a string", chat_body(stream="yes"), "invalid_params"),
]


def raw_chat(field: bytes) -> bytes:
    """A valid chat body's text with one more field spelled as given."""
    return json.dumps(chat_body()).encode()[:-1] + b", " + field + b"}"


def deep_chat(depth: int) -> bytes:
    """A chat body whose provider extra nests ``depth`` arrays (the body itself
    one level more)."""
    return raw_chat(b'"extra": ' + b"[" * depth + b"]" * depth)


RAW_BODIES = [
    ("not JSON", b"{'model': 1", "invalid_json"),
    ("truncated JSON", b'{"model": "fake-model", "messages": [', "invalid_json"),
    ("a JSON array", b"[1, 2]", "invalid_json"),
    ("a JSON string", b'"hello"', "invalid_json"),
    ("empty body", b"", "invalid_json"),
    ("not UTF-8", b"\xff\xfe{", "invalid_json"),
    # json.loads reads these bytes as a lone surrogate; they are not UTF-8.
    ("an encoded surrogate", raw_chat(b'"extra": "\xed\xa0\x80"'), "invalid_json"),
    ("50,000 nested arrays", b"[" * 50_000 + b"]" * 50_000, "invalid_json"),
    ("a chat body nesting too deep", deep_chat(MAX_REQUEST_DEPTH), "invalid_json"),
    ("NaN", raw_chat(b'"temperature": NaN'), "invalid_json"),
    ("Infinity", raw_chat(b'"seed": -Infinity'), "invalid_json"),
    ("a float beyond range", raw_chat(b'"temperature": 1e400'), "invalid_json"),
    ("an integer of 5,000 digits", raw_chat(b'"seed": ' + b"9" * 5000), "invalid_json"),
]


def assert_error(
    resp: requests.Response, surface: str, status: int, code: str | None
) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    if surface == "envelope":
        assert set(body) == {"code", "message", "data"}
        assert body["code"] == status and body["data"] is None and body["message"]
    else:
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "code", "param"}
        assert body["error"]["message"]
        if code:
            assert body["error"]["code"] == code


@pytest.mark.parametrize(("route", "surface"), CHAT_ROUTES)
@pytest.mark.parametrize(
    ("case", "body", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
def test_bad_chat_bodies_are_400_with_the_documented_code(
    stack: Stack,
    auth: dict[str, str],
    route: str,
    surface: str,
    case: str,
    body: Any,
    code: str,
) -> None:
    resp = requests.post(f"{stack.url}{route}", json=body, headers=auth, timeout=10)
    assert_error(resp, surface, 400, code)


@pytest.mark.parametrize(("route", "surface"), CHAT_ROUTES)
@pytest.mark.parametrize(
    ("case", "raw", "code"), RAW_BODIES, ids=[b[0] for b in RAW_BODIES]
)
def test_malformed_json_is_400_invalid_json(
    stack: Stack,
    auth: dict[str, str],
    route: str,
    surface: str,
    case: str,
    raw: bytes,
    code: str,
) -> None:
    resp = requests.post(
        f"{stack.url}{route}",
        data=raw,
        headers={**auth, "Content-Type": "application/json"},
        timeout=10,
    )
    assert_error(resp, surface, 400, code)


def test_a_body_nesting_to_the_limit_is_accepted(
    stack: Stack, auth: dict[str, str]
) -> None:
    resp = requests.post(
        f"{stack.url}/v1/jobs",
        data=deep_chat(MAX_REQUEST_DEPTH - 1),
        headers={**auth, "Content-Type": "application/json"},
        timeout=10,
    )
    assert resp.status_code == 202, resp.text


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize(("route", "surface"), CHAT_ROUTES)
def test_oversize_body_is_413(
    stack: Stack, auth: dict[str, str], route: str, surface: str, chunked: bool
) -> None:
    huge = chat_body(messages=[{"role": "user", "content": "x" * (9 * 1024 * 1024)}])
    raw = json.dumps(huge).encode()
    # A generator body goes out with Transfer-Encoding: chunked (no length).
    data = (raw[i : i + 65536] for i in range(0, len(raw), 65536)) if chunked else raw
    headers = {**auth, "Content-Type": "application/json"}
    resp = requests.post(f"{stack.url}{route}", data=data, headers=headers, timeout=30)
    assert_error(resp, surface, 413, "payload_too_large")


def test_a_chunked_body_within_the_limit_is_read_whole(
    stack: Stack, auth: dict[str, str]
) -> None:
    raw = json.dumps(chat_body(messages=[{"role": "user", "content": "x" * 200_000}]))
    chunks = (raw[i : i + 4096].encode() for i in range(0, len(raw), 4096))
    headers = {**auth, "Content-Type": "application/json"}
    resp = requests.post(
        f"{stack.url}/v1/chat/completions", data=chunks, headers=headers, timeout=30
    )
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    ("route", "surface"),
    [*CHAT_ROUTES, ("/v1/models", "openai"), ("/api/llm/models", "envelope")],
)
@pytest.mark.parametrize("key", [None, "llmq-unknown", ""])
def test_missing_or_unknown_key_is_401(
    stack: Stack, route: str, surface: str, key: str | None
) -> None:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    method = "GET" if route.endswith("models") else "POST"
    resp = requests.request(
        method, f"{stack.url}{route}", json=chat_body(), headers=headers, timeout=10
    )
    assert_error(resp, surface, 401, "unauthorized")


def test_x_api_key_header_is_accepted(stack: Stack, api_key: str) -> None:
    resp = requests.get(
        f"{stack.url}/v1/models", headers={"X-API-Key": api_key}, timeout=10
    )
    assert resp.status_code == 200


def test_a_revoked_key_is_401(stack: Stack) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    created = requests.post(
        f"{stack.url}/admin/keys", json={"name": "r"}, headers=admin, timeout=10
    ).json()
    auth = {"Authorization": f"Bearer {created['key']}"}
    assert (
        requests.get(f"{stack.url}/v1/models", headers=auth, timeout=10).status_code
        == 200
    )
    revoked = requests.delete(
        f"{stack.url}/admin/keys/{created['id']}", headers=admin, timeout=10
    )
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert_error(
        requests.get(f"{stack.url}/v1/models", headers=auth, timeout=10),
        "openai",
        401,
        "unauthorized",
    )


def _new_key(stack: Stack, name: str) -> dict[str, Any]:
    return requests.post(  # type: ignore[no-any-return]
        f"{stack.url}/admin/keys", json={"name": name}, headers=ADMIN, timeout=10
    ).json()


@pytest.mark.parametrize(("route", "surface"), CHAT_ROUTES)
def test_a_key_revoked_after_submits_cannot_submit_again(
    stack: Stack, route: str, surface: str
) -> None:
    """Submit routes trust cached keys and check them in the job's own script."""
    created = _new_key(stack, "revoked-after-use")
    auth = {"Authorization": f"Bearer {created['key']}"}
    for _ in range(4):  # now cached by every web process
        resp = requests.post(
            f"{stack.url}{route}", json=chat_body(), headers=auth, timeout=30
        )
        assert resp.status_code in (200, 202)
    broker = redis.Redis.from_url(stack.redis_url)
    jobs = broker.zcard(owner_jobs_key(created["id"]))
    assert jobs == 4
    requests.delete(
        f"{stack.url}/admin/keys/{created['id']}", headers=ADMIN, timeout=10
    )
    for _ in range(4):
        assert_error(
            requests.post(
                f"{stack.url}{route}", json=chat_body(), headers=auth, timeout=30
            ),
            surface,
            401,
            "unauthorized",
        )
    assert broker.zcard(owner_jobs_key(created["id"])) == jobs, "a revoked key's job"


def test_a_revocation_leaves_other_cached_keys_working(stack: Stack) -> None:
    """The submit's script sees the keys changed, checks this key again, goes on."""
    key = _new_key(stack, "stays")["key"]
    sdk = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0)
    for _ in range(4):
        sdk.chat.completions.create(model="fake-model", messages=MSG)  # type: ignore[arg-type]
    other = _new_key(stack, "goes")
    requests.delete(f"{stack.url}/admin/keys/{other['id']}", headers=ADMIN, timeout=10)
    for _ in range(4):
        reply = sdk.chat.completions.create(model="fake-model", messages=MSG)  # type: ignore[arg-type]
        assert reply.choices[0].message.content


def test_an_expired_key_is_401(stack: Stack) -> None:
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()
    key = stack.key(expires_at=past)
    resp = requests.get(
        f"{stack.url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert_error(resp, "openai", 401, "unauthorized")


@pytest.mark.parametrize(("route", "surface"), CHAT_ROUTES)
def test_a_model_outside_the_keys_allow_list_is_403(
    stack: Stack, route: str, surface: str
) -> None:
    key = stack.key(models=["sim-model"])
    resp = requests.post(
        f"{stack.url}{route}",
        json=chat_body(),
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert_error(resp, surface, 403, "forbidden")


@pytest.mark.parametrize(
    ("path", "query", "status", "code"),
    [
        ("/v1/jobs/job_nope", "", 404, "not_found"),
        ("/v1/jobs/job_nope/events", "", 404, "not_found"),
        ("/v1/nothing-here", "", 404, "not_found"),
        ("/v1/jobs", "?limit=0", 400, "invalid_params"),
        ("/v1/jobs", "?limit=abc", 400, "invalid_params"),
        ("/v1/jobs", "?status=bogus", 400, "invalid_params"),
    ],
)
def test_bad_reads_get_json_errors(
    stack: Stack, auth: dict[str, str], path: str, query: str, status: int, code: str
) -> None:
    resp = requests.get(f"{stack.url}{path}{query}", headers=auth, timeout=10)
    assert_error(resp, "openai", status, code)


def test_wait_over_60_seconds_is_invalid_params(
    stack: Stack, auth: dict[str, str]
) -> None:
    job = requests.post(
        f"{stack.url}/v1/jobs", json=chat_body(), headers=auth, timeout=10
    ).json()
    resp = requests.get(
        f"{stack.url}/v1/jobs/{job['id']}?wait=61", headers=auth, timeout=10
    )
    assert_error(resp, "openai", 400, "invalid_params")


def test_a_non_numeric_last_event_id_is_400(stack: Stack, auth: dict[str, str]) -> None:
    job = requests.post(
        f"{stack.url}/v1/jobs", json=chat_body(), headers=auth, timeout=10
    ).json()
    resp = requests.get(
        f"{stack.url}/v1/jobs/{job['id']}/events",
        headers={**auth, "Last-Event-ID": "abc"},
        timeout=10,
    )
    assert_error(resp, "openai", 400, "invalid_params")


def test_bad_priority_is_invalid_params(stack: Stack, auth: dict[str, str]) -> None:
    resp = requests.post(
        f"{stack.url}/v1/jobs",
        json=chat_body(priority="urgent"),
        headers=auth,
        timeout=10,
    )
    assert_error(resp, "openai", 400, "invalid_params")


def test_wrong_method_is_a_json_405(stack: Stack, auth: dict[str, str]) -> None:
    resp = requests.delete(f"{stack.url}/v1/chat/completions", headers=auth, timeout=10)
    assert_error(resp, "openai", 405, None)


def test_unknown_envelope_route_is_an_envelope_404(
    stack: Stack, auth: dict[str, str]
) -> None:
    resp = requests.get(f"{stack.url}/api/llm/nothing", headers=auth, timeout=10)
    assert_error(resp, "envelope", 404, None)
