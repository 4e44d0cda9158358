"""Routes that take a JSON body, and hypothesis strategies for what to post.

tests/test_fuzz.py posts what these draw: any JSON value, bytes that are not JSON
(or not UTF-8, or nest too deep), odd bytes, and a valid body of a route with a few
fields replaced, dropped or added.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from common.jsoncodec import MAX_REQUEST_DEPTH
from tests.conftest import chat_body

#: The codes of API.md section 2 (and README's decisions) with their statuses.
CODE_STATUS = {
    "invalid_model": 400,
    "invalid_messages": 400,
    "invalid_params": 400,
    "invalid_json": 400,
    "payload_too_large": 413,
    "unauthorized": 401,
    "forbidden": 403,
    "insufficient_quota": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "cancelled": 409,
    "rate_limited": 429,
    "upstream_error": 502,
    "unavailable": 503,
    "timeout": 504,
}

CONTENT_TYPES = [
    "application/json",
    None,
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=bogus",
    "multipart/form-data",
    "application/json; charset=utf-8",
    "application/json; charset=latin-1",
]

#: Models that answer at once (or are refused at once): limited models are left
#: alone, since their limits live in the Redis every test shares.
MODELS = [
    "fake-model",
    "other-model",
    "sim-model",
    "fallback-model",
    "embed-model",
    "locked-model",
    "no-such-model",
    "",
]


def legacy_body() -> dict[str, Any]:
    return {"model": "fake-model", "message": [{"role": "user", "content": "hi"}]}


CHAT_FIELDS = (
    "model",
    "messages",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "stop",
    "n",
    "tools",
    "tool_choice",
    "response_format",
    "user",
)


@dataclass(frozen=True)
class Route:
    """A route that takes a body, its valid body and the fields worth mutating."""

    name: str
    path: str
    surface: str
    valid: Callable[[], dict[str, Any]]
    fields: tuple[str, ...]
    admin: bool = False
    #: Reads no body of its own: only the shared parser sees it (cancel).
    ignores_body: bool = False


ROUTES = [
    Route("chat", "/v1/chat/completions", "openai", chat_body, CHAT_FIELDS),
    Route(
        "pinned",
        "/providers/fake/v1/chat/completions",
        "openai",
        chat_body,
        CHAT_FIELDS,
    ),
    Route(
        "jobs", "/v1/jobs", "openai", chat_body, (*CHAT_FIELDS, "priority", "metadata")
    ),
    Route(
        "envelope", "/api/llm/chat", "envelope", chat_body, (*CHAT_FIELDS, "api_key")
    ),
    Route(
        "legacy",
        "/ai_api/llm",
        "envelope",
        legacy_body,
        ("model", "message", "stream", "api_key"),
    ),
    Route(
        "admin_keys",
        "/admin/keys",
        "openai",
        lambda: {"name": "fuzz"},
        (
            "name",
            "balance",
            "daily_free",
            "rpm",
            "tpm",
            "concurrency",
            "models",
            "expires_at",
        ),
        admin=True,
    ),
    Route(
        "batches",
        "/v1/batches",
        "openai",
        lambda: {
            "input_file_id": "file-none",
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"k": "v"},
        },
        ("input_file_id", "endpoint", "completion_window", "metadata"),
    ),
    Route(
        "cancel",
        "/v1/jobs/{job_id}/cancel",
        "openai",
        chat_body,
        CHAT_FIELDS,
        ignores_body=True,
    ),
]

# ---------------------------------------------------------------- strategies

TEXT = st.text(st.characters(), max_size=20)  # lone surrogates included
LONG_TEXT = st.builds(
    lambda piece, times: piece * times,
    st.text(st.characters(), min_size=1, max_size=3),
    st.integers(1_000, 200_000),
)
HUGE_INTS = st.sampled_from(
    [2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**100, -(10**4000)]
)
INTS = st.integers() | st.integers(-(10**80), 10**80) | HUGE_INTS
FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.0, -0.0, 1.0, 2.0, 1.9999999999999998, -2.0, 5e-324, 1e308, -1e308]
)
SCALARS = st.none() | st.booleans() | INTS | FLOATS | TEXT | LONG_TEXT
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4)
    ),
    max_leaves=12,
)


def nested(value: Any, depth: int, kind: str) -> Any:
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


#: Any JSON, now and then wrapped in arrays or objects to any depth near the limit.
ANY_JSON = JSON | st.builds(
    nested,
    JSON,
    st.integers(1, 2 * MAX_REQUEST_DEPTH),
    st.sampled_from(["list", "dict"]),
)


def one_of_json(*strategies: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's plausible values, and anything else."""
    return st.one_of(*strategies, ANY_JSON)


ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool"])
PARTS = st.fixed_dictionaries(
    {"type": one_of_json(st.sampled_from(["text", "image_url"]))},
    optional={
        "text": one_of_json(TEXT),
        "image_url": one_of_json(st.fixed_dictionaries({"url": TEXT}), TEXT),
    },
)
MESSAGE = st.fixed_dictionaries(
    {"role": one_of_json(ROLES)},
    optional={
        "content": one_of_json(TEXT, LONG_TEXT, st.lists(PARTS, max_size=3)),
        "tool_calls": one_of_json(st.lists(st.dictionaries(TEXT, JSON), max_size=2)),
        "tool_call_id": one_of_json(TEXT),
        "name": one_of_json(TEXT),
    },
)
MESSAGES = st.lists(one_of_json(MESSAGE), max_size=4).map(
    lambda ms: [*ms, {"role": "user", "content": "hi"}] if ms else ms
) | st.lists(MESSAGE, max_size=4)
PROBABILITY = one_of_json(FLOATS, INTS, st.floats(-3, 3))
COUNT = one_of_json(INTS, st.integers(-2, 5), FLOATS)

FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "model": one_of_json(st.sampled_from(MODELS)),
    "messages": one_of_json(MESSAGES),
    "message": one_of_json(MESSAGES),
    "stream": one_of_json(st.booleans()),
    "stream_options": one_of_json(
        st.fixed_dictionaries(
            {}, optional={"include_usage": one_of_json(st.booleans())}
        )
    ),
    "temperature": PROBABILITY,
    "top_p": PROBABILITY,
    "presence_penalty": PROBABILITY,
    "frequency_penalty": PROBABILITY,
    "max_tokens": COUNT,
    "max_completion_tokens": COUNT,
    "seed": COUNT,
    "n": COUNT,
    "stop": one_of_json(TEXT, st.lists(TEXT, max_size=6)),
    "tools": one_of_json(st.lists(st.dictionaries(TEXT, JSON, max_size=3), max_size=3)),
    "tool_choice": one_of_json(
        st.sampled_from(["auto", "none", "required"]), st.dictionaries(TEXT, JSON)
    ),
    "response_format": one_of_json(st.dictionaries(TEXT, JSON)),
    "user": one_of_json(TEXT, LONG_TEXT),
    "priority": one_of_json(st.sampled_from(["interactive", "bulk"]), TEXT),
    "metadata": one_of_json(st.dictionaries(TEXT, JSON)),
    "name": one_of_json(TEXT, LONG_TEXT),
    "balance": one_of_json(FLOATS, INTS, TEXT),
    "daily_free": one_of_json(FLOATS, INTS, TEXT),
    "rpm": COUNT,
    "tpm": COUNT,
    "concurrency": COUNT,
    "models": one_of_json(st.lists(one_of_json(st.sampled_from(MODELS), TEXT))),
    "api_key": one_of_json(TEXT, st.sampled_from(["", "llmq-", "Bearer llmq-"])),
    "expires_at": one_of_json(
        st.datetimes(timezones=st.timezones() | st.none()).map(lambda d: d.isoformat()),
        st.builds(
            lambda moment, offset: moment.replace(tzinfo=offset).isoformat(),
            st.sampled_from([dt.datetime.min, dt.datetime.max]),
            st.none()
            | st.timedeltas(-dt.timedelta(hours=23), dt.timedelta(hours=23)).map(
                dt.timezone
            ),
        ),
        INTS,
        FLOATS,
        TEXT,
    ),
}


@st.composite
def mutated_body(draw: st.DrawFn, route: Route, api_key: str) -> dict[str, Any]:
    """The route's valid body with one to three fields replaced, dropped or added."""
    body = route.valid()
    if route.surface == "envelope" and draw(st.booleans()):
        body["api_key"] = api_key  # the key in the body, not in a header
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(route.fields))
        action = draw(st.sampled_from(["replace", "drop", "add", "message"]))
        if action == "replace":
            body[field] = draw(FIELD_VALUES.get(field, ANY_JSON))
        elif action == "drop":
            body.pop(field, None)
        elif action == "add":
            # ``fake`` would instruct the fake upstream (to hang, to fail).
            body[draw(TEXT.filter(lambda k: k != "fake"))] = draw(ANY_JSON)
        else:
            messages = body.get("messages", body.get("message"))
            if isinstance(messages, list) and messages:
                at = draw(st.integers(0, len(messages) - 1))
                if isinstance(messages[at], dict) and draw(st.booleans()):
                    key = draw(
                        st.sampled_from(["role", "content", "tool_calls", "name"])
                    )
                    messages[at] = {**messages[at], key: draw(ANY_JSON)}
                else:
                    messages[at] = draw(one_of_json(MESSAGE))
    return body


def encode(value: Any, ascii_only: bool) -> bytes:
    """``value`` as JSON text; unpaired surrogates are sent as they are, if asked."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


#: Tokens that make a valid body invalid JSON wherever a value goes.
NOT_JSON_VALUES = [
    b"NaN",
    b"-NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"-1e400",
    b"1E999",
    b"9" * 5000,
    b"01",
    b"+1",
    b".5",
    b"1.",
    b"0x10",
    b"True",
    b"None",
    b"undefined",
    b"'text'",
    b'"\xff"',
    b'"\xc0\xaf"',  # an overlong "/"
    b'"\xed\xa0\x80"',  # an encoded surrogate
    b'"\\ud800',
    b"[" * (MAX_REQUEST_DEPTH + 1) + b"]" * (MAX_REQUEST_DEPTH + 1),
]


def splice(body: dict[str, Any], field: str, token: bytes) -> bytes:
    """``body`` as JSON with ``field``'s value spelled ``token``."""
    text = json.dumps({**body, field: "@@"}).encode()
    return text.replace(b'"@@"', token, 1)


@st.composite
def not_json(draw: st.DrawFn, route: Route) -> bytes:
    """Bytes that are not a JSON text the parser takes (so: 400 invalid_json)."""
    valid = json.dumps(route.valid()).encode()
    kind = draw(
        st.sampled_from(["deep", "splice", "utf8", "truncated", "empty", "scalar"])
    )
    if kind == "deep":
        depth = draw(st.integers(MAX_REQUEST_DEPTH + 1, 200_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        inner = b"1" if opener == b'{"a":' else b""
        nest = opener * depth + inner + closer * depth
        return draw(st.sampled_from([nest, splice(route.valid(), "extra", nest)]))
    if kind == "splice":
        field = draw(st.sampled_from(route.fields))
        return splice(route.valid(), field, draw(st.sampled_from(NOT_JSON_VALUES)))
    if kind == "utf8":
        bad = draw(
            st.sampled_from([b"\xff", b"\xfe", b"\x80", b"\xc3\x28", b"\xe2\x82"])
        )
        text = json.dumps({**route.valid(), "user": "@@"}).encode()
        return text.replace(b"@@", bad, 1)
    if kind == "truncated":
        return valid[: draw(st.integers(1, len(valid) - 1))]
    if kind == "empty":
        return b""
    return encode(draw(SCALARS | st.lists(JSON, max_size=3)), draw(st.booleans()))


@st.composite
def odd_bytes(draw: st.DrawFn, route: Route) -> bytes:
    """Bytes that may or may not be JSON: noise, a valid body re-encoded or edited."""
    valid = json.dumps(route.valid())
    kind = draw(st.sampled_from(["binary", "insert", "encoding", "padded"]))
    if kind == "binary":
        return draw(st.binary(max_size=200))
    if kind == "insert":
        at = draw(st.integers(0, len(valid)))
        raw = valid.encode()
        return raw[:at] + draw(st.binary(min_size=1, max_size=4)) + raw[at:]
    if kind == "encoding":
        codec = draw(st.sampled_from(["utf-8-sig", "utf-16", "utf-16-be", "utf-32"]))
        return valid.encode(codec)
    pad = draw(st.sampled_from([b" ", b"\n", b"\t", b"\r\n", b"\x00", b"\x0c"]))
    return pad * draw(st.integers(1, 1000)) + valid.encode() + pad
