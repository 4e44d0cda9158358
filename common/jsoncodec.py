"""JSON on the paths every job takes: orjson, with the standard library behind it.

A non-streaming request is encoded or decoded about a dozen times across web and
worker (the task message, the job record, its events, the answer). For a job object
the standard library's encoder takes 8 µs where orjson takes 0.5 µs, its decoder
4.6 µs where orjson takes 1.4 µs (bench/RESULTS.md has what that did to capacity).

``dumps`` writes the compact form ``json.dumps(value, ensure_ascii=False,
separators=(",", ":"))`` writes (a float may be spelled differently: ``1e16``, not
``1e+16``). What orjson refuses to write (integers beyond 64 bits, lone
surrogates) the standard library writes with ASCII escapes, which any UTF-8 reader
takes; what orjson refuses to read (``NaN``, ``Infinity``, escaped lone surrogates)
the standard library reads. So nothing the standard library took fails here.
Request bodies are still read by the standard library (Flask's provider): orjson
reads an integer beyond 64 bits as a float, and a client's number must reach
validation as sent.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps_bytes(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON."""
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()  # ASCII escapes


def dumps(value: Any) -> str:
    """``value`` as compact JSON text."""
    return dumps_bytes(value).decode()


def loads(data: str | bytes) -> Any:
    """The value JSON ``data`` holds; ``ValueError`` if it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
