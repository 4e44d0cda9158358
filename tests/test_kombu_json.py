"""workers/kombu_json: orjson decodes messages only where kombu would get the same."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from typing import Any

import pytest
from kombu import serialization
from kombu.transport import redis as kombu_redis
from kombu.utils import json as kombu_json

from workers.broker import kombu_json as ours

ENVELOPE: dict[str, Any] = {
    "body": "W1siam9iX2FiYyJdLHt9LHsiY2FsbGJhY2tzIjpudWxsfV0=",
    "content-encoding": "utf-8",
    "content-type": "application/json",
    "headers": {"lang": "py", "task": "llmq.run_job", "retries": 0, "eta": None},
    "properties": {"delivery_tag": str(uuid.uuid4()), "priority": 0},
}


@pytest.mark.parametrize(
    "value",
    [
        ENVELOPE,
        [["job_abc"], {}, {"callbacks": None, "chord": None}],
        {"big": 2**70, "small": -(2**63) - 1, "id": 12345678901234567890},
        {"when": dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC), "id": uuid.uuid4()},
        {"text": "日本語 \u00e9", "float": 0.1, "nested": [1, [2, [3.5e300]]]},
    ],
)
def test_every_value_decodes_as_kombu_decodes_it(value: Any) -> None:
    text = kombu_json.dumps(value)
    expected = kombu_json.loads(text)
    for data in (
        text,
        text.encode(),
        bytearray(text.encode()),
        memoryview(text.encode()),
    ):
        got = ours.loads(data)
        assert got == expected
        assert type(got) is type(expected)


def test_what_json_allows_but_orjson_refuses_is_still_read() -> None:
    assert math.isnan(ours.loads('{"x": NaN}')["x"])
    assert ours.loads('"\\ud800"') == "\ud800"


def test_invalid_json_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        ours.loads(b'{"body": ')


def test_install_routes_envelopes_and_task_bodies_through_it() -> None:
    ours.install()
    ours.install()
    assert kombu_redis.loads is ours.loads
    body = kombu_json.dumps([["job_abc"], {}, {}])
    decoded = serialization.loads(body.encode(), "application/json", "utf-8")
    assert decoded == [["job_abc"], {}, {}]
    assert serialization.registry._decoders["application/json"] is ours.loads
    # Encoding stays kombu's own.
    assert serialization.dumps({"a": 1}, serializer="json")[2] == kombu_json.dumps(
        {"a": 1}
    )
