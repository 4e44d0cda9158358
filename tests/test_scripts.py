"""The Lua scripts in common/redis/lua: documented, complete, and loadable."""

from __future__ import annotations

import pytest
import redis

from common.redis import scripts
from tests.conftest import RedisServer

SCRIPTS = sorted(
    p.stem for p in scripts.LUA_DIR.glob("*.lua") if not p.stem.startswith("lib")
)


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_opens_by_naming_its_keys_argv_and_return(name: str) -> None:
    head = (scripts.LUA_DIR / f"{name}.lua").read_text().split("\n\n", 1)[0]
    assert all(line.startswith("--") for line in head.splitlines()), head
    for word in ("KEYS", "ARGV", "Returns"):
        assert word in head, f"lua/{name}.lua's opening comment names no {word}"


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_with_its_includes_loads_into_redis(
    redis_server: RedisServer, name: str
) -> None:
    text = scripts.source(name).replace("{{TOTALS}}", "{}")
    assert "--@include" not in text
    sha = redis.Redis.from_url(redis_server.url).script_load(text)
    assert len(sha) == 40


def test_a_placeholder_left_unfilled_is_refused(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    with pytest.raises(ValueError, match="start_many"):
        scripts.register(client, "start_many")
    assert scripts.register(client, "start_many", TOTALS="{}")
