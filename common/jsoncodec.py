"""JSON on the paths every job takes: orjson, with the standard library behind it.

A non-streaming request is encoded or decoded about a dozen times across web and
worker (the task message, the job record, its events, the answer). For a job object
orjson encodes and decodes it several times faster than the standard library
(bench/RESULTS.md has the figures and what they did to capacity).

``dumps`` writes the compact form ``json.dumps(value, ensure_ascii=False,
separators=(",", ":"))`` writes (a float may be spelled differently: ``1e16``, not
``1e+16``). What orjson refuses to write (integers beyond 64 bits, lone
surrogates) the standard library writes with ASCII escapes, which any UTF-8 reader
takes; what orjson refuses to read (``NaN``, ``Infinity``, escaped lone surrogates)
the standard library reads. So nothing the standard library took fails here.
Request bodies are read by ``loads_request``, the one parser every route uses
(through Flask's JSON provider): the standard library's, since orjson reads an
integer beyond 64 bits as a float and a client's number must reach validation as
sent, held to strict JSON (no ``NaN``, ``Infinity`` or numbers too large for a
float) and to ``MAX_REQUEST_DEPTH`` levels of nesting.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import orjson

from common.errors import InvalidJSONError

_OPTIONS = orjson.OPT_NON_STR_KEYS
#: Deepest nesting of arrays and objects a request body may have. A JSON schema
#: in ``tools`` or ``response_format`` nests a few dozen levels at most; far
#: deeper input only makes every later encoder and validator recurse.
MAX_REQUEST_DEPTH = 128
#: Largest power of ten an exact number may have (a float's range is 308).
MAX_EXACT_EXPONENT = 308
_TOO_DEEP = f"the body nests deeper than {MAX_REQUEST_DEPTH} levels"


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


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJSONError(f"the number {text[:40]} is too large")
    return value


def _exact(text: str) -> Decimal:
    value = Decimal(text)
    if not value.is_finite() or abs(value.adjusted()) > MAX_EXACT_EXPONENT:
        raise InvalidJSONError(f"the number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise InvalidJSONError(f"{name} is not JSON")


def _depth_at_most(value: Any, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` arrays and objects deep.

    Walked with a stack: recursion is what the check is there to avoid.
    """
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return False
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return True


def _text(data: str | bytes) -> str:
    """``data`` decoded strictly, in the encoding ``json.loads`` would detect.

    ``json.loads`` decodes bytes with ``surrogatepass``, so the bytes of a lone
    surrogate (``ED A0 80``, which is not UTF-8) would reach validation as one.
    """
    if isinstance(data, str):
        return data
    try:
        return data.decode(json.detect_encoding(data))
    except UnicodeDecodeError as exc:
        raise InvalidJSONError("the body is not UTF-8") from exc


def loads_request(data: str | bytes, exact_numbers: bool = False) -> Any:
    """A request body's value, by the rules every route shares.

    ``exact_numbers``: numbers with a fraction or exponent as ``Decimal``, read
    from their text (money, API.md section 8), instead of floats.

    Raises:
        InvalidJSONError: not JSON (or not UTF-8), ``NaN`` or ``Infinity``, a
            number beyond a float's range, or nested beyond ``MAX_REQUEST_DEPTH``.
    """
    text = _text(data)
    try:
        value = json.loads(
            text,
            parse_float=_exact if exact_numbers else _finite,
            parse_constant=_no_constant,
        )
    except RecursionError as exc:
        raise InvalidJSONError(_TOO_DEEP) from exc
    except ValueError as exc:
        raise InvalidJSONError("the body is not valid JSON") from exc
    # Only a body with that many brackets at all can nest that deep.
    if text.count("[") + text.count("{") > MAX_REQUEST_DEPTH and not (
        _depth_at_most(value, MAX_REQUEST_DEPTH)
    ):
        raise InvalidJSONError(_TOO_DEEP)
    return value
