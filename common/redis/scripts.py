"""The Lua scripts in ``lua/``, read once and registered on a client.

Each script opens with a comment naming its KEYS, ARGV and return value. What
several scripts share lives in the ``lib*.lua`` files, pulled in by a line
``--@include <name>``; a script's ``{{NAME}}`` placeholders are filled in when it
is registered (``start_many``'s table of total timeouts).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import redis
from redis.commands.core import Script

LUA_DIR = Path(__file__).resolve().parent / "lua"
_INCLUDE = re.compile(r"^--@include (\w+)$", re.MULTILINE)


@functools.cache
def source(name: str) -> str:
    """The text of ``lua/<name>.lua`` with its includes in place."""
    text = (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda match: source(match[1]), text)


def register(client: redis.Redis, name: str, **fill: str) -> Script:
    """Script ``name`` on ``client``, its ``{{KEY}}`` placeholders filled."""
    text = source(name)
    for key, value in fill.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise ValueError(f"lua/{name}.lua has a placeholder left unfilled")
    return client.register_script(text)
